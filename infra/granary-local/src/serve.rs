//! `granary-local serve`: every function in one process on the embedded backend.

use crate::apigw::{self, Gate, Target};
use crate::auth::LocalIssuer;
use crate::sources::{run_schedule, run_sqs_source};
use crate::{LocalError, resources};
use acknowledgement::Acknowledgement;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use basket_api::BasketApi;
use delayed_release::DelayedRelease;
use dissemination::Dissemination;
use feature_api::FeatureApi;
use feature_ingest::FeatureIngest;
use granary_embedded::{Embedded, SignedUrlError};
use granary_lambda::Config;
use granary_ports::BlobStore;
use http::{HeaderMap, Method, StatusCode, Uri};
use order_api::OrderApi;
use order_create::OrderCreate;
use order_maintenance::OrderMaintenance;
use outbox_relay::OutboxRelay;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use storage_ready::StorageReady;
use storage_worker::StorageWorker;
use suborder_dispatch::SuborderDispatch;
use tokio::sync::watch;

/// How often items past their TTL are deleted, and how many per table at most each time (DynamoDB
/// deletes them within days; what matters is that they go, not when).
const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_BATCH: usize = 10_000;

/// How often the memory glibc keeps after frees is handed back to the system (see [`release_free_memory`]).
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Hands back to the system the free memory glibc's allocator keeps. glibc now serves SQLite alone
/// (the Rust side allocates through jemalloc, which returns its free pages itself); when it served
/// everything, the soak benchmark measured RSS rising by 0.25 MiB a minute while heaptrack put the
/// live heap under 7 MB for the whole run. The trim stays for SQLite's page caches and statements.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes a plain integer and works on glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The most feature requests an ingest invocation takes: the template's BatchSize for NORMAL and LOW.
const INGEST_BATCH: usize = 100;

/// API Gateway's payload limit; larger bodies get 413.
const MAX_BODY: usize = 10 * 1024 * 1024;

/// Which implementation of the ports to serve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// SQLite and the filesystem in the data directory.
    Embedded,
    /// DynamoDB, SQS and S3 (or an emulator through `AWS_ENDPOINT_URL`).
    Aws,
}

/// What `serve` needs.
pub struct ServeOptions {
    /// Data directory (database and blobs of the embedded backend; the token key for both).
    pub data_dir: PathBuf,
    /// Which backend.
    pub backend: BackendChoice,
    /// A template to take the resources from instead of the built-in one.
    pub template: Option<PathBuf>,
    /// Create the template's resources first (for an emulator; the embedded backend always does).
    pub provision: bool,
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Concurrent feature-ingest invocations.
    pub ingest_workers: usize,
    /// Concurrent storage-worker invocations (each copies one request's files).
    pub storage_workers: usize,
    /// How long a nearline restore takes.
    pub restore_delay: Duration,
    /// How often the outbox relay runs.
    pub relay_every: Duration,
    /// How often delayed-release runs.
    pub release_every: Duration,
    /// How often order-maintenance runs.
    pub maintenance_every: Duration,
}

struct AppState {
    issuer: LocalIssuer,
    groups_claim: String,
    /// The embedded backend, which serves signed blob URLs itself; S3 serves its own.
    embedded: Option<Embedded>,
    backend_name: &'static str,
    feature_api: FeatureApi,
    basket_api: BasketApi,
    order_api: OrderApi,
}

/// Serves until Ctrl-C or SIGTERM, then stops taking work, lets running invocations finish, and returns.
pub async fn serve(opts: ServeOptions) -> Result<(), LocalError> {
    let mut config = Config::from_env();
    config.check().map_err(LocalError::Config)?;
    if config.order_token_secret.0.is_empty() {
        config.order_token_secret.0 = LocalIssuer::order_token_secret(&opts.data_dir).map_err(LocalError::Key)?;
    }
    let listener =
        tokio::net::TcpListener::bind(opts.listen).await.map_err(|e| LocalError::Listen(opts.listen.to_string(), e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| LocalError::Listen(opts.listen.to_string(), e.to_string()))?;
    let resources = resources::load(opts.template.as_deref()).map_err(LocalError::Config)?;
    let (backend, embedded) = crate::open_backend(opts.backend, &opts.data_dir, resources, opts.provision, |eopts| {
        eopts.restore_delay = opts.restore_delay;
        eopts.public_base_url = format!("http://{addr}");
    })
    .await?;
    let issuer = LocalIssuer::load_or_create(&opts.data_dir, &config.groups_claim).map_err(LocalError::Key)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();

    let ingest = Arc::new(FeatureIngest::new(backend.clone(), config.clone()));
    let ingest_handler = Arc::new(move |e| {
        let f = ingest.clone();
        async move { f.handle(e).await }
    });
    // Batches of up to a hundred, as the template's NORMAL and LOW mappings gather, for HIGH too: the
    // poller takes only what is visible, so a HIGH request is never held back to fill a batch, but
    // it is answered with the rest of its batch.
    for _ in 0..opts.ingest_workers.max(1) {
        workers.spawn(run_sqs_source(
            backend.clone(),
            "feature-ingest",
            config.feature_queues.to_vec(),
            INGEST_BATCH,
            ingest_handler.clone(),
            stop_rx.clone(),
        ));
    }
    // The dead-letter queue has its own event source mapping: its messages become requests in error.
    workers.spawn(run_sqs_source(
        backend.clone(),
        "feature-ingest",
        vec![config.feature_dead_letter_queue.clone()],
        10,
        ingest_handler.clone(),
        stop_rx.clone(),
    ));
    // Storage: the worker copies files (a few jobs at once, each streaming), storage-ready applies the
    // outcomes.
    let worker = Arc::new(StorageWorker::new(backend.clone(), config.clone()).map_err(LocalError::Config)?);
    let worker_handler = Arc::new(move |e| {
        let f = worker.clone();
        async move { f.handle(e).await }
    });
    for _ in 0..opts.storage_workers.max(1) {
        workers.spawn(run_sqs_source(
            backend.clone(),
            "storage-worker",
            vec![config.storage_jobs_queue.clone()],
            1,
            worker_handler.clone(),
            stop_rx.clone(),
        ));
    }
    let ready = Arc::new(StorageReady::new(backend.clone(), config.clone()));
    let ready_handler = Arc::new(move |e| {
        let f = ready.clone();
        async move { f.handle(e).await }
    });
    workers.spawn(run_sqs_source(
        backend.clone(),
        "storage-ready",
        vec![config.storage_ready_queue.clone()],
        10,
        ready_handler,
        stop_rx.clone(),
    ));
    // Orders: order-create expands an order's basket into suborders (one order per invocation).
    let order_create = Arc::new(OrderCreate::new(backend.clone(), config.clone()));
    let order_create_handler = Arc::new(move |e| {
        let f = order_create.clone();
        async move { f.handle(e).await }
    });
    workers.spawn(run_sqs_source(
        backend.clone(),
        "order-create",
        vec![config.order_create_queue.clone()],
        1,
        order_create_handler,
        stop_rx.clone(),
    ));
    // Dispatch: nudges start waiting suborders; storage jobs make their files available.
    let dispatch = Arc::new(SuborderDispatch::new(backend.clone(), config.clone()));
    let dispatch_handler = Arc::new(move |e| {
        let f = dispatch.clone();
        async move { f.handle(e).await }
    });
    workers.spawn(run_sqs_source(
        backend.clone(),
        "suborder-dispatch",
        vec![config.suborder_dispatch_queue.clone()],
        10,
        dispatch_handler,
        stop_rx.clone(),
    ));
    // Dissemination: notifications to recipients, and their acknowledgements.
    let mut dissemination = Dissemination::new(backend.clone(), config.clone()).map_err(LocalError::Config)?;
    if embedded.is_none() {
        // On AWS (or an emulator), recipients' SNS topics are reachable too.
        dissemination = dissemination.with_topics(Arc::new(granary_aws::AwsTopics::from_env().await));
    }
    let dissemination = Arc::new(dissemination);
    let dissemination_handler = Arc::new(move |e| {
        let f = dissemination.clone();
        async move { f.handle(e).await }
    });
    workers.spawn(run_sqs_source(
        backend.clone(),
        "dissemination",
        vec![config.notification_queue.clone()],
        10,
        dissemination_handler,
        stop_rx.clone(),
    ));
    let acks = Arc::new(Acknowledgement::new(backend.clone(), config.clone()));
    let ack_handler = Arc::new(move |e| {
        let f = acks.clone();
        async move { f.handle(e).await }
    });
    workers.spawn(run_sqs_source(backend.clone(), "acknowledgement", vec![config.ack_queue.clone()], 10, ack_handler, stop_rx.clone()));
    let relay = Arc::new(OutboxRelay::new(backend.clone(), &config).map_err(LocalError::Config)?);
    let relay_handler = Arc::new(move |e| {
        let f = relay.clone();
        async move { f.handle(e).await }
    });
    workers.spawn(run_schedule(backend.clone(), "granary-outbox-relay", opts.relay_every, relay_handler, stop_rx.clone()));
    let release = Arc::new(DelayedRelease::new(backend.clone(), &config));
    let release_handler = Arc::new(move |e| {
        let f = release.clone();
        async move { f.handle(e).await }
    });
    workers.spawn(run_schedule(backend.clone(), "granary-delayed-release", opts.release_every, release_handler, stop_rx.clone()));
    let maintenance = Arc::new(OrderMaintenance::new(backend.clone(), config.clone()));
    let maintenance_handler = Arc::new(move |e| {
        let f = maintenance.clone();
        async move { f.handle(e).await }
    });
    workers.spawn(run_schedule(backend.clone(), "granary-order-maintenance", opts.maintenance_every, maintenance_handler, stop_rx.clone()));
    {
        let mut stop = stop_rx.clone();
        workers.spawn(async move {
            while !*stop.borrow() {
                if tokio::time::timeout(TRIM_EVERY, stop.changed()).await.is_err() {
                    // On a blocking thread: the trim walks the heap (a few milliseconds at most).
                    let _ = tokio::task::spawn_blocking(release_free_memory).await;
                }
            }
        });
    }
    // S3 announces completed restores through EventBridge, and DynamoDB deletes items past their TTL;
    // the embedded backend needs this pump for both.
    if let Some(embedded) = embedded.clone() {
        let mut stop = stop_rx.clone();
        let queue = config.storage_ready_queue.clone();
        workers.spawn(async move {
            let mut next_purge = tokio::time::Instant::now();
            while !*stop.borrow() {
                if let Err(e) = embedded.announce_completed_restores(&queue).await {
                    tracing::error!(error = %e, "cannot announce completed restores");
                }
                if tokio::time::Instant::now() >= next_purge {
                    match embedded.purge_expired(PURGE_BATCH).await {
                        Ok(n) if n > 0 => tracing::info!(purged = n, "items past their TTL deleted"),
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "cannot delete items past their TTL"),
                    }
                    next_purge = tokio::time::Instant::now() + PURGE_EVERY;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), stop.changed()).await;
            }
        });
    }

    let backend_name = if embedded.is_some() { "embedded" } else { "aws" };
    let state = Arc::new(AppState {
        issuer,
        groups_claim: config.groups_claim.clone(),
        embedded,
        backend_name,
        feature_api: FeatureApi::new(backend.clone(), config.clone()),
        basket_api: BasketApi::new(backend.clone(), config.clone()),
        order_api: OrderApi::new(backend.clone(), config.clone()),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/openapi.json", get(openapi))
        .route("/blobs/{bucket}/{*key}", get(signed_blob))
        // The zip of an order streams here: a Lambda answer behind API Gateway cannot.
        .route("/user/orders/{order_id}/download", get(zip_download))
        .fallback(api_gateway)
        // The API Gateway stand-in reads bodies itself, to answer 413 in problem+json.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    let stop_signal = shutdown_signal()?;
    println!("granary-local listening on http://{addr} ({backend_name} backend, data directory {})", opts.data_dir.display());
    tracing::info!(%addr, "granary-local serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            stop_signal.await;
            tracing::info!("stopping: no new work is taken; running invocations finish");
        })
        .await
        .map_err(|e| LocalError::Listen(addr.to_string(), e.to_string()))?;
    let _ = stop_tx.send(true);
    while workers.join_next().await.is_some() {}
    println!("granary-local stopped");
    Ok(())
}

/// Listens for Ctrl-C and SIGTERM. The handlers are installed when this is called, before the runner
/// says it is listening, so a signal sent right after that line is never missed.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, LocalError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).map_err(|e| LocalError::Config(format!("cannot handle SIGINT: {e}")))?;
        let mut term = signal(SignalKind::terminate()).map_err(|e| LocalError::Config(format!("cannot handle SIGTERM: {e}")))?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let mut health = json!({ "status": "UP", "backend": state.backend_name });
    if state.embedded.is_some() {
        // For memory measurements (the soak benchmark): SQLite's share of the process's memory.
        health["sqliteMemoryBytes"] = granary_embedded::sqlite_memory_used().into();
    }
    // The Rust side's memory: in use, and what the allocator holds resident for it.
    if let Some((allocated, resident)) = crate::heap_bytes() {
        health["heapAllocatedBytes"] = allocated.into();
        health["heapResidentBytes"] = resident.into();
    }
    axum::Json(health).into_response()
}

async fn openapi() -> Response {
    axum::Json(crate::apigw::openapi_document()).into_response()
}

async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.issuer.jwks()).into_response()
}

async fn signed_blob(
    State(state): State<Arc<AppState>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let expires = q.get("expires").and_then(|e| e.parse::<i64>().ok());
    let (Some(expires), Some(signature)) = (expires, q.get("signature")) else {
        return (StatusCode::FORBIDDEN, "signed URL needs expires and signature").into_response();
    };
    let Some(embedded) = &state.embedded else {
        return (StatusCode::NOT_FOUND, "signed blob URLs of this backend are served by S3").into_response();
    };
    match embedded.blobs.verify_signed(&bucket, &key, expires, signature) {
        Ok(()) => {}
        Err(e @ (SignedUrlError::Expired | SignedUrlError::BadSignature)) => return (StatusCode::FORBIDDEN, e.to_string()).into_response(),
    }
    match embedded.blobs.get(&bucket, &key).await {
        Ok((meta, reader)) => {
            let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(reader));
            ([(http::header::CONTENT_LENGTH, meta.size.to_string()), (http::header::ETAG, format!("\"{}\"", meta.etag))], body)
                .into_response()
        }
        Err(granary_ports::PortError::NotFound(_)) => (StatusCode::NOT_FOUND, "no such object").into_response(),
        Err(e @ granary_ports::PortError::NotRestored { .. }) => (StatusCode::FORBIDDEN, e.to_string()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// `GET /user/orders/{orderId}/download`: the zip of the order's files available now, streamed as it
/// is written (memory does not grow with it), with a NOTICE.txt of the others; the files in it are
/// then DOWNLOADED. 204 when no file is in it; the caller and the order are checked by order-api.
async fn zip_download(State(state): State<Arc<AppState>>, Path(order_id): Path<String>, headers: HeaderMap) -> Response {
    let claims = match state.issuer.verify(headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
        Ok(claims) => claims,
        Err(_) => return apigw::into_http(granary_lambda::http::unauthorized()),
    };
    let Some(identity) = granary_lambda::Identity::from_claims(&claims, &state.groups_claim) else {
        return apigw::into_http(granary_lambda::http::unauthorized());
    };
    let plan = match state.order_api.zip_plan(&identity, &order_id).await {
        Ok(plan) => plan,
        Err(problem) => return apigw::into_http(problem),
    };
    if plan.entries.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    let rt = tokio::runtime::Handle::current();
    let api = state.order_api.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = tokio_util::io::SyncIoBridge::new_with_handle(writer, rt.clone());
        match granary_stores::archive::write_zip(&rt, api.backend(), &plan.entries, &plan.notice, &mut out) {
            Ok(written) => {
                // Recorded before the stream ends (`out` dropped), so that a client reading the order
                // once it has the whole zip sees its files downloaded.
                if let Err(e) = rt.block_on(api.zip_served(&plan, &written)) {
                    tracing::warn!(order_id = %plan.order_id, error = %e, "zip sent, downloads not all recorded");
                }
            }
            // The client went away, or a file could not be read: nothing is recorded as downloaded.
            Err(e) => tracing::warn!(order_id = %plan.order_id, error = %e, "zip download interrupted"),
        }
        drop(out);
    });
    let now = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    (
        [
            (http::header::CONTENT_TYPE, "application/zip".to_owned()),
            (http::header::CONTENT_DISPOSITION, format!("attachment;filename=order_{order_id}_{now}.zip")),
        ],
        body,
    )
        .into_response()
}

async fn api_gateway(State(state): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Body) -> Response {
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let body = match declared {
        Some(n) if n > MAX_BODY => Err(()),
        _ => axum::body::to_bytes(body, MAX_BODY).await.map_err(drop),
    };
    let Ok(body) = body else {
        let problem = json!({
            "type": "about:blank", "title": "Payload Too Large", "status": 413,
            "detail": format!("the request body is larger than API Gateway's limit of {MAX_BODY} bytes")
        });
        // The rest of the body is not read: the connection cannot be reused.
        let headers = [(http::header::CONTENT_TYPE, "application/problem+json"), (http::header::CONNECTION, "close")];
        return (StatusCode::PAYLOAD_TOO_LARGE, headers, problem.to_string()).into_response();
    };
    let now = chrono::Utc::now().timestamp_millis();
    match apigw::gate(&state.issuer, &method, uri.path(), uri.query(), &headers, &body, now) {
        Gate::Answer(status, problem) => {
            (status, [(http::header::CONTENT_TYPE, "application/problem+json")], problem.to_string()).into_response()
        }
        Gate::Invoke(target, event) => {
            let request = match apigw::into_request(&event) {
                Ok(r) => r,
                Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
            };
            let result = match target {
                Target::FeatureApi => state.feature_api.handle(request).await,
                Target::BasketApi => state.basket_api.handle(request).await,
                Target::OrderApi => state.order_api.handle(request).await,
            };
            match result {
                Ok(response) => apigw::into_http(response),
                // API Gateway answers a failed invocation with 500 and this body.
                Err(e) => {
                    tracing::error!(error = %e, "function invocation failed");
                    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({ "message": "Internal Server Error" }))).into_response()
                }
            }
        }
    }
}
