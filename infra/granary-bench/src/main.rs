//! `granary-bench`: benchmarks that print figures. Build with `--release`; see the README for the
//! figures measured on the reference machine and the commands that produced them.
//!
//! - `ports`: the embedded queue (send, receive and delete in batches of 10) and table (conditional
//!   puts and guarded counter updates) through the port traits, on a fresh data directory.
//! - `ingest`: the release granary-local on the embedded backend, fed creation requests through its
//!   NORMAL queue (a model with ten attributes, two referenced files per feature) until every one is
//!   SUCCESS: features per second, time from dequeue to SUCCESS, peak memory of the runner.
//! - `mixed`: the same runner with LOW creations queued, then HIGH ones while it works through the
//!   LOW: when the last HIGH and the last LOW finished, and how many LOW were done by the last HIGH.
//! - `storage`: the release granary-local storing files served by a local HTTP server (generated on
//!   the fly, nothing read from disk) into its online location: MiB/s for small and large files, and
//!   the runner's peak memory, which must not grow with the file size.
//! - `order`: a dataset of 10,000 products with 100 stored files each, ingested by the release
//!   granary-local, selected and ordered over HTTP: time from POST to RUNNING, suborders, memory.
//! - `aws-order`: the same expansion (100,000 files) in process against moto, DynamoDB requests counted.
//! - `aws-storage`: the same files through feature-ingest, storage-worker and storage-ready in this
//!   process on the AWS backend against moto, counting every AWS request per file.

mod coldstart;
mod dispatch;
mod http_load;
mod notify;
mod order;
mod soak;
mod storage;

use clap::{Parser, Subcommand};
use granary_embedded::{Embedded, EmbeddedOptions};
use granary_ports::{Cond, IndexSpec, Item, Key, KeyAttr, OutgoingMessage, QueueSpec, Resources, TableSpec, Update};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "granary-bench", about = "Granary benchmarks; each prints its figures")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded queue and table through the ports.
    Ports {
        /// Messages through the queue cycle.
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        /// Conditional writes of each kind.
        #[arg(long, default_value_t = 100_000)]
        writes: usize,
        /// Data directory (a temporary one when absent).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Creation requests through feature-ingest on the AWS backend against moto, counting every AWS
    /// request with the SDK interceptor.
    AwsIngest {
        /// Creation requests.
        #[arg(long, default_value_t = 1000)]
        features: usize,
    },
    /// LOW creations queued, then HIGH ones while the runner works: is HIGH served first?
    Mixed {
        /// LOW creation requests queued before the runner starts.
        #[arg(long, default_value_t = 50_000)]
        low: usize,
        /// HIGH creation requests queued once the runner has done `--high-after` LOW ones.
        #[arg(long, default_value_t = 2_000)]
        high: usize,
        /// LOW requests done before the HIGH ones are queued.
        #[arg(long, default_value_t = 1_000)]
        high_after: usize,
        /// Concurrent feature-ingest invocations in the runner.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The granary-local binary (the release build beside this one by default).
        #[arg(long)]
        runner: Option<PathBuf>,
    },
    /// Files stored by the release granary-local from a local HTTP server into its online location.
    Storage {
        /// Files of 1 MiB.
        #[arg(long, default_value_t = 2000)]
        small: usize,
        /// Large files.
        #[arg(long, default_value_t = 20)]
        large: usize,
        /// Size of a large file in MiB.
        #[arg(long, default_value_t = 200)]
        large_mib: u64,
        /// Concurrent storage-worker invocations in the runner.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The granary-local binary (the release build beside this one by default).
        #[arg(long)]
        runner: Option<PathBuf>,
    },
    /// The same files through ingest, the storage worker and storage-ready in process, on moto,
    /// counting every AWS request.
    AwsStorage {
        /// Files of 1 MiB.
        #[arg(long, default_value_t = 200)]
        small: usize,
        /// Large files.
        #[arg(long, default_value_t = 2)]
        large: usize,
        /// Size of a large file in MiB.
        #[arg(long, default_value_t = 200)]
        large_mib: u64,
    },
    /// A whole dataset ordered through the release granary-local: time from POST to RUNNING, memory.
    Order {
        /// Products in the dataset.
        #[arg(long, default_value_t = 10_000)]
        products: usize,
        /// Stored files per product.
        #[arg(long, default_value_t = 100)]
        files: usize,
        /// The granary-local binary (the release build beside this one by default).
        #[arg(long)]
        runner: Option<PathBuf>,
    },
    /// Many users ordering and downloading at once through the release granary-local: time until every
    /// order is final, dispatcher invocations, the longest wait of a small order.
    Dispatch {
        /// Users, each placing every order of `sizes`.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Order sizes in products (one 100 KiB file each), comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 50, 2, 30])]
        sizes: Vec<usize>,
        /// Products in the catalog.
        #[arg(long, default_value_t = 2000)]
        products: usize,
        /// The granary-local binary (the release build beside this one by default).
        #[arg(long)]
        runner: Option<PathBuf>,
    },
    /// The HTTP API under load: keep-alive connections, each a distinct user, on a basket read then a
    /// basket mutation: requests per second, p50/p99 latency, errors.
    HttpLoad {
        /// Connection counts, each run in turn.
        #[arg(long, value_delimiter = ',', default_values_t = [50, 200])]
        connections: Vec<usize>,
        /// Seconds of each phase.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// The granary-local binary (the release build beside this one by default).
        #[arg(long)]
        runner: Option<PathBuf>,
    },
    /// A steady mixed workload on the release granary-local for a while: its memory, open file
    /// descriptors and queues sampled every ten seconds, the first and last minute compared.
    Soak {
        /// Minutes to run.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Producer creations a second (each with a stored file).
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// The granary-local binary (the release build beside this one by default).
        #[arg(long)]
        runner: Option<PathBuf>,
    },
    /// The same expansion in process on moto, counting DynamoDB requests.
    AwsOrder {
        /// Products in the dataset.
        #[arg(long, default_value_t = 1_000)]
        products: usize,
        /// Stored files per product.
        #[arg(long, default_value_t = 100)]
        files: usize,
    },
    /// Every function's release binary started against a local Lambda Runtime API, beside the
    /// lambda-hello baseline: init and first answer, median of `--runs` starts, and binary size.
    ColdStart {
        /// Starts of each binary.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Where the binaries are (the directory of this one by default).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Notifications delivered to one queue recipient through the release granary-local: one per
    /// creation queued, delivered per second, delay from creation to delivery.
    Notify {
        /// Creation requests, each notified once.
        #[arg(long, default_value_t = 50_000)]
        features: usize,
        /// Concurrent feature-ingest invocations in the runner.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The granary-local binary (the release build beside this one by default).
        #[arg(long)]
        runner: Option<PathBuf>,
    },
    /// Creation requests through the release granary-local's queues.
    Ingest {
        /// Creation requests.
        #[arg(long, default_value_t = 100_000)]
        features: usize,
        /// Concurrent feature-ingest invocations in the runner.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The granary-local binary (the release build beside this one by default).
        #[arg(long)]
        runner: Option<PathBuf>,
    },
}

pub(crate) fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn ports(messages: usize, writes: usize, dir: PathBuf) {
    let resources = Resources {
        tables: vec![TableSpec {
            name: "bench".into(),
            indexes: vec![IndexSpec::new("byState", KeyAttr::string("state"), Some(KeyAttr::number("at")))],
            ttl_attr: None,
        }],
        queues: vec![QueueSpec::new("bench").with_dlq("bench-dlq", 5), QueueSpec::new("bench-dlq")],
        buckets: vec![],
    };
    let b = Embedded::open(EmbeddedOptions::new(&dir, resources)).expect("open").backend();
    let body = serde_json::json!({"metadata": {"sessionOwner": "bench", "session": "s"}, "feature": {"id": "p", "properties": {"a": 1}}})
        .to_string();

    // Queue: send everything, then receive and delete everything, both in batches of 10.
    let start = Instant::now();
    for _ in 0..messages.div_ceil(10) {
        let batch = (0..10).map(|_| OutgoingMessage::new(body.clone()).attribute("regards.request.type", "CREATION")).collect();
        b.queue.send_batch("bench", batch).await.expect("send");
    }
    let sent = start.elapsed();
    let start = Instant::now();
    let mut received = 0;
    loop {
        let got = b.queue.receive("bench", 10, None, Duration::ZERO).await.expect("receive");
        if got.is_empty() {
            break;
        }
        received += got.len();
        b.queue.delete_batch("bench", got.into_iter().map(|m| m.receipt_handle).collect()).await.expect("delete");
    }
    let drained = start.elapsed();
    let total = messages.div_ceil(10) * 10;
    assert_eq!(received, total, "every message received once");
    // Interleaved: what a steady producer and consumer see.
    let start = Instant::now();
    for _ in 0..messages.div_ceil(10) {
        let batch = (0..10).map(|_| OutgoingMessage::new(body.clone())).collect();
        b.queue.send_batch("bench", batch).await.expect("send");
        let got = b.queue.receive("bench", 10, None, Duration::ZERO).await.expect("receive");
        b.queue.delete_batch("bench", got.into_iter().map(|m| m.receipt_handle).collect()).await.expect("delete");
    }
    let cycle = start.elapsed();

    // Table: put-if-absent on distinct keys, then guarded counter increments on one item.
    let start = Instant::now();
    for i in 0..writes {
        let item =
            Item::new(Key::new(format!("F#{i}"), "V001")).with("state", "RUNNING").with("at", i as i64).with("payload", body.as_str());
        b.table.put("bench", item, Some(Cond::ItemAbsent)).await.expect("put");
    }
    let puts = start.elapsed();
    let start = Instant::now();
    let mut granted = 0;
    for _ in 0..writes {
        if b.table
            .update("bench", &Key::new("slots", "pool"), vec![Update::add("n", 1)], Some(Cond::counter_below("n", 1, writes as i64 / 2)))
            .await
            .is_ok()
        {
            granted += 1;
        }
    }
    let counters = start.elapsed();
    assert_eq!(granted, writes / 2, "the guard held");

    println!("embedded ports benchmark ({total} messages, {writes} writes of each kind, data directory {})", dir.display());
    println!("  queue send, batches of 10:               {:>10.0} messages/s", per_second(total, sent));
    println!("  queue receive + delete, batches of 10:   {:>10.0} messages/s", per_second(total, drained));
    println!("  queue full cycle (send, receive, delete): {:>9.0} messages/s (phases measured apart)", per_second(total, sent + drained));
    println!("  queue full cycle, interleaved batches:   {:>10.0} messages/s", per_second(total, cycle));
    println!("  table put-if-absent (indexed item):      {:>10.0} writes/s", per_second(writes, puts));
    println!("  table guarded counter (n < limit):       {:>10.0} writes/s", per_second(writes, counters));
}

fn model() -> serde_json::Value {
    let attrs: Vec<serde_json::Value> = (0..10)
        .map(|i| match i % 3 {
            0 => serde_json::json!({"name": format!("s{i}"), "type": "STRING", "optional": false, "restriction": {"type": "PATTERN", "pattern": "^[A-Z0-9]+$"}}),
            1 => serde_json::json!({"name": format!("d{i}"), "type": "DOUBLE", "optional": false, "restriction": {"type": "DOUBLE_RANGE", "min": 0, "max": 100}}),
            _ => serde_json::json!({"name": format!("t{i}"), "type": "DATE_ISO8601", "optional": true}),
        })
        .collect();
    serde_json::json!({"name": "BENCH", "type": "DATA", "attributes": attrs})
}

pub(crate) fn creation_of(provider_id: &str, i: usize) -> String {
    let mut props = serde_json::Map::new();
    for k in 0..10 {
        let (name, value) = match k % 3 {
            0 => (format!("s{k}"), serde_json::json!(format!("V{i}"))),
            1 => (format!("d{k}"), serde_json::json!((i % 100) as f64 / 2.0)),
            _ => (format!("t{k}"), serde_json::json!("2026-11-23T10:15:31Z")),
        };
        props.insert(name, value);
    }
    let file = |n: usize| {
        serde_json::json!({
            "locations": [{"url": format!("https://data.example.invalid/p{i}/f{n}.zip")}],
            "attributes": {"dataType": "RAWDATA", "mimeType": "application/zip", "filename": format!("f{n}.zip"), "filesize": 1024, "algorithm": "MD5", "checksum": format!("{:032x}", i * 2 + n)}
        })
    };
    serde_json::json!({
        "metadata": {"sessionOwner": "bench", "session": "ingest"},
        "feature": {"type": "Feature", "id": provider_id, "entityType": "DATA", "model": "BENCH",
                    "geometry": {"type": "Point", "coordinates": [1.0, 43.0]}, "properties": props, "files": [file(1), file(2)]}
    })
    .to_string()
}

pub(crate) fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Defines the benchmark's model and queues `features` creation requests on the NORMAL queue.
async fn prepare(b: &granary_ports::Backend, features: usize, at_once: usize) {
    define_model(b).await;
    queue_creations(b, "feature-normal", "bench", features, at_once).await;
}

pub(crate) async fn define_model(b: &granary_ports::Backend) {
    let def = model();
    let compiled = granary_domain::model::compile_model("BENCH", &def).expect("model");
    granary_stores::models::ModelStore::new("features").put(b, &def, &compiled, "bench").await.expect("model stored");
}

/// Queues `n` creations of providerIds `<prefix>-<i>` on `queue`, request ids `<prefix>-r<i>`.
///
/// `at_once` send batches go together, as a producer with many connections sends: the embedded queue
/// commits them in one transaction, so that a producer beside a busy runner waits for the write lock
/// once per `at_once` batches, not once per ten messages. (moto takes them one at a time: a hundred at
/// once made it grow past 19 GB.)
pub(crate) async fn queue_creations(b: &granary_ports::Backend, queue: &str, prefix: &str, n: usize, at_once: usize) {
    let messages: Vec<OutgoingMessage> = (0..n)
        .map(|i| {
            let provider_id = if prefix == "bench" { format!("bench-{i:07}") } else { format!("{prefix}-{i:07}") };
            let request_id = if prefix == "bench" { format!("r{i}") } else { format!("{prefix}-r{i}") };
            OutgoingMessage::new(creation_of(&provider_id, i))
                .attribute("regards.request.type", "CREATION")
                .attribute("regards.request.id", request_id)
        })
        .collect();
    granary_ports::queue::send_all(b.queue.as_ref(), queue, messages, at_once, |_| {}).await.expect("send");
}

/// Starts the release runner on `dir`, listening on `listen`, with `args` after `serve`.
pub(crate) fn spawn_runner(runner: &std::path::Path, dir: &std::path::Path, listen: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(runner)
        .args(["serve", "--listen", listen])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("GRANARY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (cargo build --release -p granary-local)", runner.display()))
}

/// A memory figure of process `pid` in KiB: `field` is `VmRSS:` (now) or `VmHWM:` (peak so far).
pub(crate) fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// When each request of providerIds `<prefix>-<i>` was created (epoch ms), from its feature version.
async fn created_at(b: &granary_ports::Backend, prefix: &str, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = granary_ports::Key::new(format!("F#{}", granary_domain::entity_uuid(&format!("{prefix}-{i:07}"))), "V001");
        let item = b.table.get("features", &key).await.expect("get").unwrap_or_else(|| panic!("{prefix}-{i} was not created"));
        out.push(item.get_i64("createdAt").expect("createdAt"));
    }
    out
}

async fn mixed(low: usize, high: usize, high_after: usize, workers: usize, runner: PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).expect("template");
    let b = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).expect("open").backend();
    define_model(&b).await;
    queue_creations(&b, "feature-low", "low", low, EMBEDDED_SENDS_AT_ONCE).await;
    let mut child = spawn_runner(&runner, dir.path(), "127.0.0.1:0", &["--ingest-workers", &workers.to_string()]);
    let started = Instant::now();
    let responses = |n: usize| {
        let b = b.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(3600);
            while (b.queue.depth("feature-response").await.expect("depth").total() as usize) < n {
                assert!(Instant::now() < deadline, "not done within an hour");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Each request answers GRANTED and SUCCESS.
    responses(2 * high_after.min(low)).await;
    let high_queued_at = started.elapsed();
    queue_creations(&b, "feature-high", "high", high, EMBEDDED_SENDS_AT_ONCE).await;
    let high_in = started.elapsed();
    responses(2 * (low + high)).await;
    let _ = child.kill();
    let _ = child.wait();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let epoch = now_ms - started.elapsed().as_millis() as i64;
    let lows = created_at(&b, "low", low).await;
    let highs = created_at(&b, "high", high).await;
    let last_high = *highs.iter().max().expect("high");
    let last_low = *lows.iter().max().expect("low");
    let low_before = lows.iter().filter(|t| **t <= last_high).count();
    let secs = |t: i64| (t - epoch) as f64 / 1000.0;
    println!("mixed priority benchmark: {low} LOW queued, then {high} HIGH once {high_after} LOW were done; {workers} ingest workers");
    println!(
        "  HIGH queued from {:.1} s to {:.1} s; last HIGH done at {:.1} s ({:.1} s after the first was queued)",
        high_queued_at.as_secs_f64(),
        high_in.as_secs_f64(),
        secs(last_high),
        secs(last_high) - high_queued_at.as_secs_f64()
    );
    println!(
        "  LOW done when the last HIGH finished: {low_before} of {low} ({:.1} %; goal under 10 %)",
        low_before as f64 * 100.0 / low as f64
    );
    println!("  last LOW done at {:.1} s", secs(last_low));
}

async fn ingest(features: usize, workers: usize, runner: PathBuf) {
    use granary_ports::{Key, Query};
    let dir = tempfile::tempdir().expect("temporary directory");
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).expect("template");
    let b = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).expect("open").backend();
    let start = Instant::now();
    prepare(&b, features, EMBEDDED_SENDS_AT_ONCE).await;
    println!("queued {features} creation requests in {:.1} s", start.elapsed().as_secs_f64());

    let mut child = spawn_runner(&runner, dir.path(), "127.0.0.1:0", &["--ingest-workers", &workers.to_string()]);
    let started = Instant::now();
    let pid = child.id();
    let mut peak_kib = 0u64;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        peak_kib = peak_kib.max(memory_kib(pid, "VmHWM:"));
        let d = b.queue.depth("feature-response").await.expect("depth");
        if d.total() as usize >= 2 * features {
            break;
        }
        assert!(Instant::now() < deadline, "not done within an hour");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();

    // Time from dequeue (the request's registration by the handler) to its SUCCESS event being sent.
    let mut latencies = Vec::with_capacity(features);
    loop {
        let got = b.queue.receive("feature-response", 10, None, Duration::ZERO).await.expect("receive");
        if got.is_empty() {
            break;
        }
        for m in &got {
            let e: serde_json::Value = serde_json::from_str(&m.body).expect("event");
            if e["state"] == "SUCCESS" {
                let id = e["requestId"].as_str().unwrap_or_default();
                if let Some(r) = b.table.get("requests", &Key::new(format!("R#{id}"), "R")).await.expect("get") {
                    latencies.push(m.sent_at_ms - r.get_i64("registeredAt").unwrap_or(m.sent_at_ms));
                }
            }
        }
        b.queue.delete_batch("feature-response", got.into_iter().map(|m| m.receipt_handle).collect()).await.expect("delete");
    }
    latencies.sort_unstable();
    let sample =
        b.table.query(Query::partition("features", format!("F#{}", granary_domain::entity_uuid("bench-0000000")))).await.expect("query");
    assert_eq!(sample.items.len(), 1, "one version per providerId");
    println!("ingest benchmark: {features} creations, {workers} ingest workers, model of 10 attributes, 2 referenced files each");
    println!("  end to end:            {:>10.0} features/s ({:.1} s)", per_second(features, elapsed), elapsed.as_secs_f64());
    println!(
        "  dequeue to SUCCESS:    p50 {} ms, p99 {} ms ({} measured)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len()
    );
    println!("  runner peak RSS:       {:>10.1} MiB", peak_kib as f64 / 1024.0);
}

/// Send batches a benchmark's producer sends at once to the embedded queue.
pub(crate) const EMBEDDED_SENDS_AT_ONCE: usize = 100;

/// The template's BatchSize for the NORMAL and LOW feature queues.
const INGEST_BATCH: usize = 100;

async fn aws_ingest(features: usize) {
    use granary_aws::{Aws, RequestCounter};
    let endpoint = granary_aws::emulator::shared_moto();
    let prefix = format!("bench{}-", std::process::id());
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).expect("template");
    let setup = Aws::connect(&resources, granary_aws::emulator::options(endpoint, &prefix)).await;
    granary_aws::provision::provision(&setup, &resources).await.expect("provision");
    let b = setup.backend();
    prepare(&b, features, 1).await;
    // What a Lambda and its event source mapping do, counted: receive a batch, handle it, delete it.
    let counter = RequestCounter::default();
    let mut options = granary_aws::emulator::options(endpoint, &prefix);
    options.counter = Some(counter.clone());
    let aws = Aws::connect(&resources, options).await.backend();
    let ingest = feature_ingest::FeatureIngest::new(aws.clone(), granary_lambda::Config::from_env());
    let start = Instant::now();
    let mut done = 0;
    while done < features {
        // The template's NORMAL mapping gathers up to 100 messages, ten to a ReceiveMessage.
        let got = granary_ports::queue::receive_up_to(aws.queue.as_ref(), "feature-normal", INGEST_BATCH, Duration::from_secs(1))
            .await
            .expect("receive");
        if got.is_empty() {
            continue;
        }
        let event = granary_lambda::sqs::sqs_event("feature-normal", &got).expect("event");
        let response = ingest.handle(lambda_runtime::LambdaEvent::new(event, lambda_runtime::Context::default())).await.expect("handle");
        assert!(response.batch_item_failures.is_empty(), "no failures expected");
        done += got.len();
        for chunk in got.chunks(10) {
            aws.queue.delete_batch("feature-normal", chunk.iter().map(|m| m.receipt_handle.clone()).collect()).await.expect("delete");
        }
    }
    let elapsed = start.elapsed();
    let c = counter.get();
    let per_k = |n: u64| n as f64 * 1000.0 / features as f64;
    println!(
        "AWS ingest benchmark on moto: {features} creations (model of 10 attributes, 2 referenced files), batches of up to {INGEST_BATCH}"
    );
    println!(
        "  AWS requests per 1,000 features: DynamoDB {:.0}, SQS {:.0}, S3 {:.0} (total {:.0})",
        per_k(c.dynamodb),
        per_k(c.sqs),
        per_k(c.s3),
        per_k(c.total())
    );
    println!(
        "  DynamoDB floor of the data model: 1,060 per 1,000 (one Query for the latest version each, every write in 100-op transactions)"
    );
    println!("  throughput against moto (not AWS): {:.0} features/s", per_second(features, elapsed));
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::AwsIngest { features } => aws_ingest(features).await,
        Command::Mixed { low, high, high_after, workers, runner } => {
            let runner = runner.unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("granary-local"));
            mixed(low, high, high_after, workers, runner).await;
        }
        Command::Notify { features, workers, runner } => {
            let runner = runner.unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("granary-local"));
            notify::run(features, workers, &runner).await;
        }
        Command::Ingest { features, workers, runner } => {
            let runner = runner.unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("granary-local"));
            ingest(features, workers, runner).await;
        }
        Command::Storage { small, large, large_mib, workers, runner } => {
            let runner = runner.unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("granary-local"));
            storage::run(small, large, large_mib, workers, runner).await;
        }
        Command::AwsStorage { small, large, large_mib } => storage::aws(small, large, large_mib).await,
        Command::Order { products, files, runner } => {
            let runner = runner.unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("granary-local"));
            order::run(products, files, runner).await;
        }
        Command::AwsOrder { products, files } => order::aws(products, files).await,
        Command::ColdStart { runs, dir } => {
            let dir = dir.unwrap_or_else(|| std::env::current_exe().expect("exe").parent().expect("a directory").to_owned());
            coldstart::run(dir, runs.max(1)).await;
        }
        Command::Soak { minutes, rate, runner } => {
            let runner = runner.unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("granary-local"));
            soak::run(minutes.max(2), rate.max(1), runner).await;
        }
        Command::HttpLoad { connections, secs, runner } => {
            let runner = runner.unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("granary-local"));
            http_load::run(connections, secs, runner).await;
        }
        Command::Dispatch { users, sizes, products, runner } => {
            let runner = runner.unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("granary-local"));
            dispatch::run(users, sizes, products, runner).await;
        }
        Command::Ports { messages, writes, data_dir } => {
            let tmp = tempfile::tempdir().expect("temporary directory");
            let dir = data_dir.unwrap_or_else(|| tmp.path().to_owned());
            ports(messages, writes, dir).await;
        }
    }
}
