//! The soak run: the release granary-local under a steady mixed workload for `minutes` minutes:
//! `rate` producer creations a second (each with a stored file copied from a local directory, one in
//! ten patched and one in twenty deleted a little later), and every ten seconds a user ordering ten
//! products and downloading them, with a queue recipient notified of everything. Every ten seconds:
//! the runner's resident memory and open file descriptors, and what waits in its queues. At the end:
//! the first and the last minute side by side, and whether memory, descriptors or queues grew.

use granary_ports::OutgoingMessage;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DATASET: &str = "SOAK_DS";

/// One sample of the runner.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    /// What SQLite held of it (its page caches fill up to their bounds as the data grows).
    sqlite_kib: u64,
    /// The Rust side's memory in use (jemalloc's `allocated`), and what its allocator holds resident.
    heap_kib: u64,
    heap_resident_kib: u64,
    fds: usize,
    queued: u64,
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Runs the soak.
pub(crate) async fn run(minutes: u64, rate: u32, runner: PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sources = tempfile::tempdir().expect("sources directory");
    let scratch = tempfile::tempdir().expect("scratch directory");
    // The template with a queue for the recipient.
    let template = granary_resources::TEMPLATE.replacen("Resources:\n", "Resources:\n  SoakMirrorQueue:\n    Type: AWS::SQS::Queue\n\n", 1);
    let template_path = scratch.path().join("template.yaml");
    std::fs::write(&template_path, &template).expect("template");
    let resources = granary_resources::from_template(&template, |_| None).expect("template");
    let queues: Vec<String> = resources.queues.iter().map(|q| q.name.clone()).collect();
    let mirror_queue = queues.iter().find(|q| q.contains("mirror")).expect("the recipient's queue").clone();
    let b = granary_embedded::Embedded::open(granary_embedded::EmbeddedOptions::new(dir.path(), resources)).expect("open").backend();
    crate::order::define_models(&b).await;
    let port = crate::order::free_port();
    let mut child = std::process::Command::new(&runner)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("GRANARY_LOG", "warn")
        .env("GRANARY_LOCAL_TEMPLATE", &template_path)
        .env("GRANARY_STORAGE_FILE_ROOTS", sources.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (cargo build --release -p granary-local)", runner.display()));
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let admin = format!("Bearer {}", crate::order::admin_token(&runner, dir.path()));
    let user = format!("Bearer {}", crate::order::token(&runner, dir.path(), "soak@example.org"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the runner did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mirror = json!({"target": {"type": "queue", "queue": mirror_queue}, "ackRequired": false});
    let res = http.put(format!("{base}/recipients/mirror")).header("authorization", &admin).json(&mirror).send().await.expect("recipient");
    assert!(res.status().is_success(), "recipient: {}", res.status());
    let message = |kind: &str, id: String, body: Value| {
        OutgoingMessage::new(body.to_string()).attribute("regards.request.type", kind).attribute("regards.request.id", id)
    };
    let meta = json!({"sessionOwner": "soak", "session": "s", "storages": [{"pluginBusinessId": "online"}]});
    let dataset = json!({"type": "Feature", "id": DATASET, "entityType": "DATASET", "model": "BENCH_DATASET", "geometry": null,
                         "properties": {"label": "Soak", "accessGroups": ["bench"]}});
    b.queue
        .send_batch("feature-normal", vec![message("CREATION", "soak-ds".into(), json!({"metadata": meta, "feature": dataset}))])
        .await
        .expect("send");
    let urn = |i: u64| format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid(&format!("soak-{i}")));

    println!("soak: {minutes} min, {rate} creations/s with a stored file each, an order of 10 products every 10 s");
    println!(
        "  {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>8} {:>9} {:>8}",
        "min", "RSS MiB", "SQLite MiB", "rest MiB", "in use MiB", "held MiB", "fds", "queued", "created", "orders"
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut samples: Vec<Sample> = Vec::new();
    let mut created: u64 = 0;
    let mut orders = 0u64;
    let mut next_sample = start + Duration::from_secs(10);
    let mut next_order = start + Duration::from_secs(10);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while Instant::now() < end {
        tick.tick().await;
        // Creations at the rate asked, a tenth of a second's worth at a time.
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        let mut batch = Vec::new();
        while created < due {
            let i = created;
            let content = format!("soak file {i}").repeat(100).into_bytes();
            let path = sources.path().join(format!("soak-{i}.bin"));
            std::fs::write(&path, &content).expect("source file");
            use md5::Digest;
            let feature = json!({"type": "Feature", "id": format!("soak-{i}"), "entityType": "DATA", "model": "BENCH_PRODUCT",
                "tags": [DATASET], "geometry": null, "properties": {"n": i},
                "files": [{"locations": [{"url": format!("file://{}", path.display())}], "attributes": {"dataType": "RAWDATA",
                    "mimeType": "application/octet-stream", "filename": format!("soak-{i}.bin"), "filesize": content.len(),
                    "algorithm": "MD5", "checksum": hex::encode(md5::Md5::digest(&content))}}]});
            batch.push(message("CREATION", format!("c-{i}"), json!({"metadata": meta, "feature": feature})));
            // A patch and a deletion of products created a while ago.
            if i >= 100 && i.is_multiple_of(10) {
                let patch = json!({"metadata": {"sessionOwner": "soak", "session": "s"},
                                   "feature": {"type": "Feature", "urn": urn(i - 100), "properties": {"patched": true}}});
                batch.push(message("PATCH", format!("p-{i}"), patch));
            }
            if i >= 100 && i % 20 == 5 {
                batch.push(message("DELETION", format!("d-{i}"), json!({"urn": urn(i - 100)})));
            }
            created += 1;
        }
        for chunk in granary_ports::queue::batches(batch) {
            b.queue.send_batch("feature-normal", chunk).await.expect("send");
        }
        // The recipient's queue, the producers' response queue and the order events are read as a
        // partner, the producers and a client would: what is left queued is Granary's own backlog.
        for queue in [mirror_queue.as_str(), "feature-response", "order-events"] {
            loop {
                let got = b.queue.receive(queue, 10, None, Duration::ZERO).await.expect("receive");
                if got.is_empty() {
                    break;
                }
                b.queue.delete_batch(queue, got.into_iter().map(|m| m.receipt_handle).collect()).await.expect("delete");
            }
        }
        if Instant::now() >= next_order && created > 300 {
            next_order += Duration::from_secs(10);
            // Ten products created over a minute ago (stored by now), never deleted ones.
            let first = created - 300 + (orders * 7) % 150;
            let ids: Vec<String> = (first..first + 20).filter(|i| i % 20 != 5).take(10).map(|i| format!("soak-{i}")).collect();
            order_and_download(&http, &base, &user, ids, orders).await;
            orders += 1;
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(10);
            let mut queued = 0;
            for q in &queues {
                queued += b.queue.depth(q).await.map(|d| d.total()).unwrap_or(0);
            }
            let health = health(&http, &base).await;
            let kib = |name: &str| health[name].as_u64().unwrap_or(0) / 1024;
            let s = Sample {
                at: start.elapsed(),
                rss_kib: crate::memory_kib(pid, "VmRSS:"),
                sqlite_kib: kib("sqliteMemoryBytes"),
                heap_kib: kib("heapAllocatedBytes"),
                heap_resident_kib: kib("heapResidentBytes"),
                fds: open_fds(pid),
                queued,
            };
            if s.at.as_secs() % 60 < 10 {
                println!(
                    "  {:>6.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>6} {:>8} {:>9} {:>8}",
                    s.at.as_secs_f64() / 60.0,
                    s.rss_kib as f64 / 1024.0,
                    s.sqlite_kib as f64 / 1024.0,
                    s.rss_kib.saturating_sub(s.sqlite_kib) as f64 / 1024.0,
                    s.heap_kib as f64 / 1024.0,
                    s.heap_resident_kib as f64 / 1024.0,
                    s.fds,
                    s.queued,
                    created,
                    orders
                );
            }
            samples.push(s);
        }
    }
    let hwm = crate::memory_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    let minute = |from: Duration, to: Duration| -> Vec<Sample> { samples.iter().copied().filter(|s| s.at >= from && s.at < to).collect() };
    let total = Duration::from_secs(minutes * 60);
    let (first, last) = (minute(Duration::from_secs(60), Duration::from_secs(120)), minute(total - Duration::from_secs(60), total));
    fn avg(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
        v.iter().map(f).sum::<f64>() / v.len().max(1) as f64
    }
    println!("  second minute vs last minute (averages):");
    // One line a memory figure (KiB in the samples): its second minute against its last.
    let mib = |label: &str, kib: fn(&Sample) -> u64, what: &str| {
        let mib = |s: &Sample| kib(s) as f64 / 1024.0;
        println!("    {label:<9} {:>8.1} MiB -> {:>8.1} MiB{what}", avg(&first, mib), avg(&last, mib));
    };
    mib("RSS", |s| s.rss_kib, "");
    mib("SQLite", |s| s.sqlite_kib, "");
    mib("the rest", |s| s.rss_kib.saturating_sub(s.sqlite_kib), "");
    mib("in use", |s| s.heap_kib, " (jemalloc's allocated: the Rust side's live memory)");
    mib("held", |s| s.heap_resident_kib, " (jemalloc's resident: in use, free space and metadata)");
    println!("    open fds  {:>8.1}     -> {:>8.1}", avg(&first, |s| s.fds as f64), avg(&last, |s| s.fds as f64));
    println!("    queued    {:>8.1}     -> {:>8.1}", avg(&first, |s| s.queued as f64), avg(&last, |s| s.queued as f64));
    println!("  {created} creations sent, {orders} orders placed and downloaded, runner peak RSS {:.1} MiB", hwm as f64 / 1024.0);
}

/// The runner's health answer, with the memory SQLite and the Rust side hold (null if it did not answer).
async fn health(http: &reqwest::Client, base: &str) -> Value {
    let Ok(res) = http.get(format!("{base}/health")).send().await else { return Value::Null };
    res.json::<Value>().await.unwrap_or(Value::Null)
}

/// One user order of `ids`, waited for and every file downloaded (the Granary link, not followed).
async fn order_and_download(http: &reqwest::Client, base: &str, bearer: &str, ids: Vec<String>, n: u64) {
    let res = http
        .post(format!("{base}/order/basket/selection"))
        .header("authorization", bearer)
        .json(&json!({"entityIdsToInclude": ids}))
        .send()
        .await;
    if !res.is_ok_and(|r| r.status().is_success()) {
        return;
    }
    let Ok(res) =
        http.post(format!("{base}/user/orders")).header("authorization", bearer).json(&json!({"label": format!("soak {n}")})).send().await
    else {
        return;
    };
    let Ok(order) = res.json::<Value>().await else { return };
    let Some(id) = order["id"].as_str() else { return };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(v) = http.get(format!("{base}/user/orders/{id}")).header("authorization", bearer).send().await else { return };
        let v: Value = v.json().await.unwrap_or_default();
        if matches!(v["status"].as_str(), Some("DONE" | "DONE_WITH_WARNING" | "FAILED")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Ok(files) = http.get(format!("{base}/orders/{id}/files/available?size=100")).header("authorization", bearer).send().await else {
        return;
    };
    let files: Value = files.json().await.unwrap_or_default();
    for f in files["content"].as_array().into_iter().flatten() {
        if let Some(link) = f["download"].as_str() {
            let _ = http.get(format!("{base}{link}")).header("authorization", bearer).send().await;
        }
    }
}
