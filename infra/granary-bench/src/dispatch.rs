//! The dispatch benchmark: many users, each placing several orders of mixed sizes over HTTP on the
//! release granary-local, and downloading every file as soon as it is available (each download is the
//! Granary link: `GET /orders/files/{id}`, answered by a redirect that is not followed, so the figures
//! measure dispatch and the recording of downloads, not byte transfer). Printed: time until every
//! order is final, dispatcher invocations and starts (counted from the runner's log), and how long
//! small orders waited.

use crate::per_second;
use granary_ports::OutgoingMessage;
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DATASET: &str = "DISPATCH_DS";
const FILE_BYTES: u64 = 100 * 1024;

fn product(i: usize) -> String {
    json!({
        "metadata": {"sessionOwner": "bench", "session": "dispatch"},
        "feature": {"type": "Feature", "id": format!("dp-{i:05}"), "entityType": "DATA", "model": "BENCH_PRODUCT", "tags": [DATASET],
                    "geometry": null, "properties": {},
                    "files": [{"locations": [{"storage": "online", "url": format!("s3://storage/online/dp/{i:032x}")}],
                               "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream", "filename": format!("dp-{i:05}.dat"),
                                              "filesize": FILE_BYTES, "algorithm": "MD5", "checksum": format!("{i:032x}")}}]}
    })
    .to_string()
}

/// One user's run: the orders' ids and sizes, then each order's wait from POST to its final status.
struct UserRun {
    waits: Vec<(usize, Duration)>,
    downloads: usize,
}

/// `users` users with the given order sizes (in products, rotated per user), `products` products.
pub(crate) async fn run(users: usize, sizes: Vec<usize>, products: usize, runner: PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).expect("template");
    let b = granary_embedded::Embedded::open(granary_embedded::EmbeddedOptions::new(dir.path(), resources)).expect("open").backend();
    crate::order::define_models(&b).await;
    let message = |body: String, id: String| {
        OutgoingMessage::new(body).attribute("regards.request.type", "CREATION").attribute("regards.request.id", id)
    };
    let dataset = json!({"metadata": {"sessionOwner": "bench", "session": "dispatch"},
        "feature": {"type": "Feature", "id": DATASET, "entityType": "DATASET", "model": "BENCH_DATASET", "geometry": null,
                    "properties": {"label": "Dispatch benchmark", "accessGroups": ["bench"]}}});
    b.queue.send_batch("feature-normal", vec![message(dataset.to_string(), "dp-ds".into())]).await.expect("send");
    let messages: Vec<OutgoingMessage> = (0..products).map(|i| message(product(i), format!("dp-{i}"))).collect();
    for batch in granary_ports::queue::batches(messages) {
        b.queue.send_batch("feature-normal", batch).await.expect("send");
    }
    let port = crate::order::free_port();
    // Suborders of at most 1 MiB: ten files of 100 KiB each.
    let mut child = std::process::Command::new(&runner)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("GRANARY_LOG", "warn,suborder_dispatch=info")
        .env("GRANARY_ORDER_SUBORDER_MAX_MIB", "1")
        // The JSON log goes to stdout: the dispatches are counted from it.
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (cargo build --release -p granary-local)", runner.display()));
    let pid = child.id();
    let (dispatches, started) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn({
        let (dispatches, started) = (dispatches.clone(), started.clone());
        move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if v.pointer("/fields/message").and_then(Value::as_str) == Some("dispatched") {
                    dispatches.fetch_add(1, Ordering::Relaxed);
                    started.fetch_add(v.pointer("/fields/started").and_then(Value::as_u64).unwrap_or(0), Ordering::Relaxed);
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(3600);
    while (b.queue.depth("feature-response").await.expect("depth").total() as usize) < 2 * (products + 1) {
        assert!(Instant::now() < deadline, "catalog not ingested within an hour");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let base = format!("http://127.0.0.1:{port}");
    let tokens: Vec<String> = (0..users).map(|u| crate::order::token(&runner, dir.path(), &format!("user{u:03}@example.org"))).collect();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let total_orders = users * sizes.len();
    let total_files: usize = users * sizes.iter().sum::<usize>();
    println!("{products} products ingested; {users} users x {} orders of {sizes:?} products (one file of 100 KiB each)", sizes.len());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (u, token) in tokens.into_iter().enumerate() {
        let (http, base, sizes) = (http.clone(), base.clone(), sizes.clone());
        tasks.spawn(async move { user(u, &http, &base, &format!("Bearer {token}"), &sizes, products, deadline).await });
    }
    let mut waits = Vec::new();
    let mut downloads = 0;
    while let Some(run) = tasks.join_next().await {
        let run = run.expect("user task");
        downloads += run.downloads;
        waits.extend(run.waits);
    }
    let elapsed = start.elapsed();
    let hwm = crate::memory_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    let small = sizes.iter().copied().min().unwrap_or(1);
    let mut small_waits: Vec<Duration> = waits.iter().filter(|(n, _)| *n == small).map(|(_, d)| *d).collect();
    small_waits.sort();
    let mut all_waits: Vec<Duration> = waits.iter().map(|(_, d)| *d).collect();
    all_waits.sort();
    let at = |v: &[Duration], p: f64| v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default().as_secs_f64();
    println!("dispatch benchmark (embedded, release granary-local, pool 20, 2 per user)");
    println!("  orders final:                        {:>8} of {total_orders}", waits.len());
    println!("  files downloaded:                    {downloads:>8} of {total_files}");
    println!("  time until every order was final:    {:>8.1} s ({:.0} files/s)", elapsed.as_secs_f64(), per_second(downloads, elapsed));
    println!("  dispatcher invocations:              {:>8}", dispatches.load(Ordering::Relaxed));
    println!("  suborders started by them:           {:>8}", started.load(Ordering::Relaxed));
    println!(
        "  small orders ({small} product): POST to final median {:.1} s, p95 {:.1} s, longest {:.1} s",
        at(&small_waits, 0.5),
        at(&small_waits, 0.95),
        at(&small_waits, 1.0)
    );
    println!("  every order: median {:.1} s, longest {:.1} s", at(&all_waits, 0.5), at(&all_waits, 1.0));
    println!("  runner peak RSS:                     {:>8.1} MiB (VmHWM)", hwm as f64 / 1024.0);
}

async fn user(u: usize, http: &reqwest::Client, base: &str, bearer: &str, sizes: &[usize], products: usize, deadline: Instant) -> UserRun {
    let mut orders = Vec::new();
    let mut offset = u * 7;
    for k in 0..sizes.len() {
        let n = sizes[(k + u) % sizes.len()];
        let ids: Vec<String> = (0..n).map(|j| format!("dp-{:05}", (offset + j) % products)).collect();
        offset += n;
        let res = http
            .post(format!("{base}/order/basket/selection"))
            .header("authorization", bearer)
            .body(json!({"entityIdsToInclude": ids}).to_string())
            .send()
            .await
            .expect("selection");
        assert!(res.status().is_success(), "selection: {}", res.status());
        let posted = Instant::now();
        let order: Value = http
            .post(format!("{base}/user/orders"))
            .header("authorization", bearer)
            .body(json!({"label": format!("bench order {k}")}).to_string())
            .send()
            .await
            .expect("order")
            .json()
            .await
            .expect("order json");
        orders.push((order["id"].as_str().expect("an order id").to_owned(), n, posted, None::<Duration>));
    }
    let mut downloads = 0;
    // A user looks at their orders once a second (one listing), and downloads what is available.
    loop {
        assert!(Instant::now() < deadline, "orders not final within an hour");
        let page: Value = http
            .get(format!("{base}/user/orders?size=20"))
            .header("authorization", bearer)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let listed = page["content"].as_array().cloned().unwrap_or_default();
        let mut busy = false;
        for (id, _, posted, final_after) in orders.iter_mut() {
            let Some(order) = listed.iter().find(|o| o["id"] == id.as_str()) else { continue };
            let status = order["status"].as_str().unwrap_or_default();
            if final_after.is_none() && matches!(status, "DONE" | "DONE_WITH_WARNING" | "FAILED") {
                *final_after = Some(posted.elapsed());
            }
            if order["availableFilesCount"].as_u64().unwrap_or(0) > 0 {
                let page: Value = http
                    .get(format!("{base}/orders/{id}/files/available?size=1000"))
                    .header("authorization", bearer)
                    .send()
                    .await
                    .expect("files")
                    .json()
                    .await
                    .expect("json");
                for f in page["content"].as_array().into_iter().flatten().filter(|f| f["state"] == "AVAILABLE") {
                    let res = http
                        .get(format!("{base}{}", f["download"].as_str().unwrap_or_default()))
                        .header("authorization", bearer)
                        .send()
                        .await;
                    if res.is_ok_and(|r| r.status().as_u16() == 302) {
                        downloads += 1;
                        busy = true;
                    }
                }
            }
        }
        if orders.iter().all(|(_, _, _, f)| f.is_some()) && !busy {
            break;
        }
        if !busy {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    UserRun { waits: orders.iter().map(|(_, n, _, f)| (*n, f.unwrap_or_default())).collect(), downloads }
}
