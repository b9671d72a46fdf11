//! Fixtures for the function crates' tests (a dev-dependency only): an embedded site on a temporary
//! directory with a manual clock, features ingested through the real feature-ingest handler, queues
//! drained, and HTTP handlers' answers read as JSON.

use feature_ingest::FeatureIngest;
use granary_domain::dissemination::{SIGNATURE_HEADER, verify};
use granary_embedded::{Embedded, EmbeddedOptions};
use granary_lambda::Config;
use granary_lambda::sqs::sqs_event;
use granary_ports::{Backend, ManualClock, ReceivedMessage};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            assert!(r.batch_item_failures.is_empty(), "ingest failed messages {:?} (SQS would redeliver them)", r.batch_item_failures);
            for f in chunk {
                let latest = granary_stores::features::FeatureStore::new(&self.config.features_table, &self.config.requests_table)
                    .latest_version(&self.backend, f["id"].as_str().unwrap_or_default())
                    .await
                    .expect("latest version");
                if latest == 0 {
                    panic!("feature {} was not created; refusals: {:?}", f["id"], self.refusals().await);
                }
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
        assert!(r.batch_item_failures.is_empty(), "ingest failed messages {:?} (SQS would redeliver them)", r.batch_item_failures);
    }

    /// Takes every message of `queue`, deleting them.
    pub async fn drain(&self, queue: &str) -> Vec<ReceivedMessage> {
        drain(&self.backend, queue).await
    }

    /// The errors of every DENIED or ERROR response event sent so far (taken off the response queue).
    async fn refusals(&self) -> Vec<String> {
        drain(&self.backend, &self.config.response_queue)
            .await
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(&m.body).ok())
            .filter(|e| e["state"] == "DENIED" || e["state"] == "ERROR")
            .map(|e| format!("{}: {}", e["id"].as_str().unwrap_or("?"), e["errors"]))
            .collect()
    }
}

/// Takes every message of `queue` on `backend`, deleting them.
pub async fn drain(backend: &Backend, queue: &str) -> Vec<ReceivedMessage> {
    let mut out = Vec::new();
    loop {
        let got = backend.queue.receive(queue, 10, None, Duration::ZERO).await.expect("receive");
        if got.is_empty() {
            return out;
        }
        backend.queue.delete_batch(queue, got.iter().map(|m| m.receipt_handle.clone()).collect()).await.expect("delete");
        out.extend(got);
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

/// A webhook on 127.0.0.1 answering 503 to its first `failures` calls, then 200 to those signed with
/// `secret` (401 to the others); returns its URL, the event ids it accepted, and how many calls it had.
pub async fn webhook(secret: &'static str, failures: usize) -> (String, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let url = format!("http://{}/hook", listener.local_addr().expect("its address"));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (keep, count) = (accepted.clone(), calls.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (keep, count) = (keep.clone(), count.clone());
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = vec![0u8; 65536];
                // Read the head, then the body its Content-Length announces.
                let (head, body) = loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..i]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0);
                        while data.len() < i + 4 + length {
                            let n = socket.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            data.extend_from_slice(&buf[..n]);
                        }
                        break (head, data[i + 4..].to_vec());
                    }
                };
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let signed = header(SIGNATURE_HEADER).is_some_and(|s| verify(secret, &body, &s));
                let status = if n < failures {
                    "503 Service Unavailable"
                } else if signed {
                    keep.lock().unwrap_or_else(|p| p.into_inner()).push(header("X-Granary-Event-Id").unwrap_or_default());
                    "200 OK"
                } else {
                    "401 Unauthorized"
                };
                let _ = socket.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).await;
            });
        }
    });
    (url, accepted, calls)
}
