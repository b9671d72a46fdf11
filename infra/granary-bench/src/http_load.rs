//! The HTTP API under load: the release granary-local, `connections` keep-alive connections, each a
//! distinct user with a basket holding one selection, sending requests back to back for `secs`
//! seconds: first basket reads (`GET /order/basket`), then basket mutations (`PUT
//! …/updateFileFilters`, alternately setting and removing a filter: a conditional write of the basket
//! each time). Printed per phase: requests per second, p50/p99/max latency, errors. The load
//! generator runs in this process on the same machine, as the issue asks.

use granary_ports::OutgoingMessage;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DATASET: &str = "LOAD_DS";

/// What one connection saw in one phase.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

/// Runs both phases at each of `connection_counts`.
pub(crate) async fn run(connection_counts: Vec<usize>, secs: u64, runner: PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).expect("template");
    let b = granary_embedded::Embedded::open(granary_embedded::EmbeddedOptions::new(dir.path(), resources)).expect("open").backend();
    crate::order::define_models(&b).await;
    let message = |feature: Value, id: &str| {
        OutgoingMessage::new(json!({"metadata": {"sessionOwner": "bench", "session": "load"}, "feature": feature}).to_string())
            .attribute("regards.request.type", "CREATION")
            .attribute("regards.request.id", id)
    };
    let dataset = json!({"type": "Feature", "id": DATASET, "entityType": "DATASET", "model": "BENCH_DATASET", "geometry": null,
                         "properties": {"label": "Load benchmark", "accessGroups": ["bench"]}});
    let product = json!({"type": "Feature", "id": "load-0", "entityType": "DATA", "model": "BENCH_PRODUCT", "tags": [DATASET], "geometry": null,
        "properties": {}, "files": [
            {"locations": [{"storage": "online", "url": "s3://storage/online/load/0"}], "attributes": {"dataType": "RAWDATA",
             "mimeType": "application/zip", "filename": "load-0.zip", "filesize": 1000, "algorithm": "MD5", "checksum": format!("{:032x}", 1)}},
            {"locations": [{"storage": "online", "url": "s3://storage/online/load/1"}], "attributes": {"dataType": "QUICKLOOK_SD",
             "mimeType": "image/png", "filename": "load-0.png", "filesize": 10, "algorithm": "MD5", "checksum": format!("{:032x}", 2)}}]});
    b.queue.send_batch("feature-normal", vec![message(dataset, "load-ds"), message(product, "load-0")]).await.expect("send");
    let port = crate::order::free_port();
    let mut child = std::process::Command::new(&runner)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("GRANARY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (cargo build --release -p granary-local)", runner.display()));
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.queue.depth("feature-response").await.expect("depth").total() < 4 {
        assert!(Instant::now() < deadline, "catalog not ingested within a minute");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = format!("http://127.0.0.1:{port}");
    let most = connection_counts.iter().copied().max().unwrap_or(1);
    // Each connection its own user, its basket holding one selection.
    let users: Vec<(String, u64)> = {
        let tokens: Vec<String> = (0..most).map(|u| crate::order::token(&runner, dir.path(), &format!("load{u:04}@example.org"))).collect();
        let http = reqwest::Client::new();
        let mut users = Vec::new();
        for t in tokens {
            let bearer = format!("Bearer {t}");
            let basket: Value = http
                .post(format!("{base}/order/basket/selection"))
                .header("authorization", &bearer)
                .header("content-type", "application/json")
                .body(json!({"entityIdsToInclude": ["load-0"]}).to_string())
                .send()
                .await
                .expect("selection")
                .json()
                .await
                .expect("basket");
            let id = basket["datasetSelections"][0]["id"].as_u64().unwrap_or_else(|| panic!("no selection: {basket}"));
            users.push((bearer, id));
        }
        users
    };
    println!("HTTP load (release granary-local, embedded backend; load generator in the same 2-core machine)");
    println!("  {:<18} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7}", "phase", "conns", "req/s", "p50 ms", "p99 ms", "max ms", "errors");
    for &connections in &connection_counts {
        for phase in ["basket read", "basket mutation"] {
            let start = Instant::now();
            let stop = start + Duration::from_secs(secs);
            let mut tasks = tokio::task::JoinSet::new();
            for (bearer, selection) in users.iter().take(connections).cloned() {
                let base = base.clone();
                tasks.spawn(async move { connection(&base, &bearer, selection, phase == "basket mutation", stop).await });
            }
            let mut all = Seen::default();
            while let Some(seen) = tasks.join_next().await {
                let seen = seen.expect("connection task");
                all.latencies_us.extend(seen.latencies_us);
                all.errors += seen.errors;
                all.first_error = all.first_error.or(seen.first_error);
            }
            let elapsed = start.elapsed();
            all.latencies_us.sort_unstable();
            let at = |p: f64| {
                let v = &all.latencies_us;
                v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default() as f64 / 1000.0
            };
            println!(
                "  {phase:<18} {connections:>5} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                crate::per_second(all.latencies_us.len() + all.errors, elapsed),
                at(0.5),
                at(0.99),
                at(1.0),
                all.errors
            );
            if let Some(e) = all.first_error {
                println!("    first error: {e}");
            }
        }
    }
    let hwm = crate::memory_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    println!("  runner peak RSS: {:.1} MiB (VmHWM)", hwm as f64 / 1024.0);
}

/// One keep-alive connection of one user, requests back to back until `stop`.
async fn connection(base: &str, bearer: &str, selection: u64, mutate: bool, stop: Instant) -> Seen {
    // One client per connection, one idle connection kept: every request of this user goes over it.
    let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
    let mut seen = Seen::default();
    let filters = format!("{base}/order/basket/dataset/{selection}/updateFileFilters");
    let read = format!("{base}/order/basket");
    let mut n = 0u64;
    while Instant::now() < stop {
        let request = if mutate {
            // Set a filter, then remove it (an empty body): each a conditional write of the basket.
            let body = if n.is_multiple_of(2) { json!({"fileTypes": ["RAWDATA"]}).to_string() } else { String::new() };
            http.put(&filters).header("content-type", "application/json").body(body)
        } else {
            http.get(&read)
        };
        n += 1;
        let sent = Instant::now();
        match request.header("authorization", bearer).send().await {
            Ok(res) if res.status().is_success() => {
                let _ = res.bytes().await;
                seen.latencies_us.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok(res) => {
                seen.errors += 1;
                if seen.first_error.is_none() {
                    seen.first_error = Some(format!("{} {}", res.status(), res.text().await.unwrap_or_default()));
                }
            }
            Err(e) => {
                seen.errors += 1;
                seen.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    seen
}
