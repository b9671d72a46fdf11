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

/// One keep-alive connection of one user, requests back to back until `stop`. The requests go through
/// hyper's HTTP/1 connection itself, their parts built once: a load generator costing the machine
/// little, as wrk would: through reqwest's client (its pool, URL parsing and header maps) this
/// generator took about twice the CPU a request, on the two cores the runner serves with (0.27 of a
/// core at 8,100 mutations a second then, 0.25–0.3 at 17,400 now).
async fn connection(base: &str, bearer: &str, selection: u64, mutate: bool, stop: Instant) -> Seen {
    let mut seen = Seen::default();
    let authority = base.trim_start_matches("http://").to_owned();
    let path = if mutate { format!("/order/basket/dataset/{selection}/updateFileFilters") } else { "/order/basket".to_owned() };
    // Set a filter, then remove it (an empty body): each a conditional write of the basket.
    let bodies = [bytes::Bytes::from(json!({"fileTypes": ["RAWDATA"]}).to_string()), bytes::Bytes::new()];
    let mut sender = match open(&authority).await {
        Ok(s) => s,
        Err(e) => {
            seen.errors += 1;
            seen.first_error = Some(e);
            return seen;
        }
    };
    let mut n = 0usize;
    while Instant::now() < stop {
        let request = http::Request::builder()
            .method(if mutate { http::Method::PUT } else { http::Method::GET })
            .uri(path.as_str())
            .header(http::header::HOST, authority.as_str())
            .header(http::header::AUTHORIZATION, bearer)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(if mutate { bodies[n % 2].clone() } else { bytes::Bytes::new() }))
            .expect("request");
        n += 1;
        let sent = Instant::now();
        let answer = match sender.send_request(request).await {
            Ok(res) => {
                let status = res.status();
                match http_body_util::BodyExt::collect(res.into_body()).await {
                    Ok(body) => Ok((status, body.to_bytes())),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok((status, _)) if status.is_success() => {
                seen.latencies_us.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok((status, body)) => {
                seen.errors += 1;
                seen.first_error.get_or_insert_with(|| format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => {
                seen.errors += 1;
                seen.first_error.get_or_insert(e);
                // The connection is gone: the next request goes over a new one, as a client would.
                match open(&authority).await {
                    Ok(s) => sender = s,
                    Err(_) => return seen,
                }
            }
        }
    }
    seen
}

/// A new keep-alive HTTP/1 connection to `authority`, driven by a task of its own.
async fn open(authority: &str) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}
