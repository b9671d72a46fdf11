//! The order benchmark: a dataset of products with many stored files each, ingested through the
//! release granary-local's queue; a user selects the whole dataset over HTTP and orders it; the time
//! from `POST /user/orders` to the order leaving PENDING, the suborders made, and the runner's memory
//! while it expands. `aws` does the same expansion in process against moto, counting DynamoDB requests.

use crate::per_second;
use granary_ports::{Backend, OutgoingMessage};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DATASET: &str = "BENCH_DS";
const FILE_BYTES: u64 = 100 * 1024;

fn dataset_creation() -> String {
    json!({
        "metadata": {"sessionOwner": "bench", "session": "order"},
        "feature": {"type": "Feature", "id": DATASET, "entityType": "DATASET", "model": "BENCH_DATASET", "geometry": null,
                    "properties": {"label": "Benchmark dataset", "accessGroups": ["bench"]}}
    })
    .to_string()
}

fn product_creation(i: usize, files: usize) -> String {
    let files: Vec<Value> = (0..files)
        .map(|f| {
            json!({"locations": [{"storage": "nearline", "url": format!("s3://storage/nearline/p{i}/{f}")}],
                   "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream", "filename": format!("p{i:06}-{f:03}.dat"),
                                  "filesize": FILE_BYTES, "algorithm": "MD5", "checksum": format!("{i:016x}{f:016x}")}})
        })
        .collect();
    json!({
        "metadata": {"sessionOwner": "bench", "session": "order"},
        "feature": {"type": "Feature", "id": format!("order-bench-{i:07}"), "entityType": "DATA", "model": "BENCH_PRODUCT",
                    "tags": [DATASET], "geometry": {"type": "Point", "coordinates": [1.0, 43.0]},
                    "properties": {"acquisitionDate": "2026-11-23T10:00:00Z"}, "files": files}
    })
    .to_string()
}

pub(crate) async fn define_models(b: &Backend) {
    for (name, kind) in [("BENCH_PRODUCT", "DATA"), ("BENCH_DATASET", "DATASET")] {
        let def = json!({"type": "object", "x-granary-type": kind});
        let compiled = granary_domain::model::compile_model(name, &def).expect("model");
        granary_stores::models::ModelStore::new("features").put(b, &def, &compiled, "bench").await.expect("model stored");
    }
}

/// Queues the dataset and `products` products of `files` files on `queue`.
async fn queue_catalog(b: &Backend, queue: &str, products: usize, files: usize) {
    let message = |body: String, id: String| {
        OutgoingMessage::new(body).attribute("regards.request.type", "CREATION").attribute("regards.request.id", id)
    };
    b.queue.send_batch(queue, vec![message(dataset_creation(), "order-ds".into())]).await.expect("send");
    for chunk in (0..products).collect::<Vec<_>>().chunks(10) {
        let messages = chunk.iter().map(|i| message(product_creation(*i, files), format!("order-p{i}"))).collect();
        for batch in granary_ports::queue::batches(messages) {
            b.queue.send_batch(queue, batch).await.expect("send");
        }
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A bearer token of `user` in group `bench`, valid two hours, from the runner of `dir`.
pub(crate) fn token(runner: &Path, dir: &Path, user: &str) -> String {
    let out = std::process::Command::new(runner)
        .args(["token", "--user", user, "--groups", "bench", "--ttl", "7200", "--data-dir"])
        .arg(dir)
        .output()
        .expect("granary-local token");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An admin's bearer token, valid two hours (the soak run is shorter), from the runner of `dir`.
pub(crate) fn admin_token(runner: &Path, dir: &Path) -> String {
    let out = std::process::Command::new(runner)
        .args(["token", "--user", "root@example.org", "--admin", "--ttl", "7200", "--data-dir"])
        .arg(dir)
        .output()
        .expect("granary-local token");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The embedded benchmark: `products` products of `files` files, ordered whole.
pub(crate) async fn run(products: usize, files: usize, runner: PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).expect("template");
    let b = granary_embedded::Embedded::open(granary_embedded::EmbeddedOptions::new(dir.path(), resources)).expect("open").backend();
    define_models(&b).await;
    let start = Instant::now();
    queue_catalog(&b, "feature-normal", products, files).await;
    println!("queued {} creations ({products} products of {files} files) in {:.1} s", products + 1, start.elapsed().as_secs_f64());
    let port = free_port();
    let mut child = crate::spawn_runner(&runner, dir.path(), &format!("127.0.0.1:{port}"), &[]);
    let pid = child.id();
    let ingest_start = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(3600);
    while (b.queue.depth("feature-response").await.expect("depth").total() as usize) < 2 * (products + 1) {
        assert!(Instant::now() < deadline, "catalog not ingested within an hour");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "ingested in {:.1} s; runner RSS {:.1} MiB",
        ingest_start.elapsed().as_secs_f64(),
        crate::memory_kib(pid, "VmRSS:") as f64 / 1024.0
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", token(&runner, dir.path(), "bench@example.org"));
    let select_start = Instant::now();
    let basket: Value = http
        .post(format!("{base}/order/basket/selection"))
        .header("authorization", &bearer)
        .body(json!({"datasetUrn": DATASET}).to_string())
        .send()
        .await
        .expect("selection")
        .json()
        .await
        .expect("basket");
    let selected = &basket["datasetSelections"][0];
    assert_eq!(selected["filesCount"].as_u64(), Some((products * files) as u64), "basket: {basket}");
    println!("basket selection of the dataset counted in {:.1} s", select_start.elapsed().as_secs_f64());

    let rss_before = crate::memory_kib(pid, "VmRSS:");
    let posted = Instant::now();
    let order: Value = http
        .post(format!("{base}/user/orders"))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("order")
        .json()
        .await
        .expect("order json");
    let answered = posted.elapsed();
    let id = order["id"].as_str().unwrap_or_else(|| panic!("no order: {order}")).to_owned();
    let mut peak_rss = rss_before;
    let order = loop {
        peak_rss = peak_rss.max(crate::memory_kib(pid, "VmRSS:"));
        let o: Value = http
            .get(format!("{base}/user/orders/{id}"))
            .header("authorization", &bearer)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if o["status"] != "PENDING" {
            break o;
        }
        assert!(Instant::now() < deadline, "order not expanded within an hour");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = posted.elapsed();
    let hwm = crate::memory_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    let suborders = order["suborders"].as_array().map(Vec::len).unwrap_or(0);
    let total = order["filesCount"].as_u64().unwrap_or(0);
    assert_eq!(total, (products * files) as u64, "order: {}", order["status"]);
    println!("order benchmark (embedded): {products} products x {files} stored files of {} KiB = {total} files", FILE_BYTES / 1024);
    println!("  POST /user/orders answered PENDING in {:>8.0} ms", answered.as_secs_f64() * 1000.0);
    println!(
        "  POST to {}:            {:>8.1} s ({:.0} files/s)",
        order["status"].as_str().unwrap_or(""),
        elapsed.as_secs_f64(),
        per_second(total as usize, elapsed)
    );
    println!("  suborders made:                   {suborders:>8}");
    println!("  runner RSS before the order:      {:>8.1} MiB", rss_before as f64 / 1024.0);
    println!("  runner peak RSS while expanding:  {:>8.1} MiB (sampled every 100 ms)", peak_rss as f64 / 1024.0);
    println!("  runner peak RSS of the whole run: {:>8.1} MiB (VmHWM, ingest included)", hwm as f64 / 1024.0);
}

/// The expansion in process on moto: `products` products of `files` files, DynamoDB requests counted.
pub(crate) async fn aws(products: usize, files: usize) {
    use granary_aws::{Aws, RequestCounter};
    use lambda_runtime::{Context, LambdaEvent};
    granary_lambda::init_logging();
    let endpoint = granary_aws::emulator::shared_moto();
    let prefix = format!("order{}-", std::process::id());
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).expect("template");
    let setup = Aws::connect(&resources, granary_aws::emulator::options(endpoint, &prefix)).await;
    granary_aws::provision::provision(&setup, &resources).await.expect("provision");
    let b = setup.backend();
    let config = granary_lambda::Config::from_env();
    let setup_start = Instant::now();
    define_models(&b).await;
    queue_catalog(&b, "feature-normal", products, files).await;
    let ingest = feature_ingest::FeatureIngest::new(b.clone(), config.clone());
    let mut done = 0;
    while done < products + 1 {
        let got = b.queue.receive("feature-normal", 10, None, Duration::from_secs(1)).await.expect("receive");
        if got.is_empty() {
            continue;
        }
        let event = granary_lambda::sqs::sqs_event("feature-normal", &got).expect("event");
        ingest.handle(LambdaEvent::new(event, Context::default())).await.expect("ingest");
        done += got.len();
        b.queue.delete_batch("feature-normal", got.into_iter().map(|m| m.receipt_handle).collect()).await.expect("delete");
    }
    let caller: Option<(&str, &[&str])> = Some(("bench@example.org", &["bench"]));
    let baskets = basket_api::BasketApi::new(b.clone(), config.clone());
    let selection = granary_lambda::http::apigw_request(
        "POST",
        "/order/basket/selection",
        "",
        Some(&json!({"datasetUrn": DATASET}).to_string()),
        caller,
    );
    assert_eq!(baskets.handle(selection).await.expect("basket").status(), 200);
    let orders = order_api::OrderApi::new(b.clone(), config.clone());
    assert_eq!(
        orders.handle(granary_lambda::http::apigw_request("POST", "/user/orders", "", None, caller)).await.expect("order").status(),
        201
    );

    let counter = RequestCounter::default();
    let mut options = granary_aws::emulator::options(endpoint, &prefix);
    options.counter = Some(counter.clone());
    let counted = Aws::connect(&resources, options).await.backend();
    let create = order_create::OrderCreate::new(counted.clone(), config.clone());
    println!("catalog ingested and ordered in {:.1} s; expanding", setup_start.elapsed().as_secs_f64());
    let start = Instant::now();
    let messages = b.queue.receive("order-create", 1, None, Duration::from_secs(5)).await.expect("receive");
    let event = granary_lambda::sqs::sqs_event("order-create", &messages).expect("event");
    let response = create.handle(LambdaEvent::new(event, Context::default())).await.expect("expand");
    assert!(response.batch_item_failures.is_empty(), "the expansion failed");
    let elapsed = start.elapsed();
    let c = counter.get();
    let total = (products * files) as f64;
    println!("order benchmark (AWS backend on moto): {products} products x {files} stored files = {total} files, expansion in process");
    println!("  DynamoDB requests per 1,000 files: {:.1} ({} in all)", c.dynamodb as f64 * 1000.0 / total, c.dynamodb);
    println!("  floor of the data model:           10.0 (one item per file, written 100 to a TransactWriteItems)");
    println!("  expansion against moto (not AWS):  {:.1} s ({:.0} files/s)", elapsed.as_secs_f64(), per_second(total as usize, elapsed));
}
