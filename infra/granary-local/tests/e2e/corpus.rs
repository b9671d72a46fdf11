//! The bad-input corpus (`tests/corpus/*.jsonl` at the workspace root, written by
//! `tests/corpus/generate.py`) replayed against a running granary-local configured as in the cloud
//! (outbound policy refusing internal addresses and unlisted hosts): every HTTP input gets a 4xx
//! problem (or, for feature submissions, requests that all end DENIED), every feature request message a
//! DENIED event, every acknowledgement and storage event a dead-lettered copy with its reason; nothing
//! gets a 5xx, hangs, kills the runner, or writes outside its data directory.

use super::*;
use base64::Engine;
use futures::StreamExt;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/corpus");
/// Entry points whose inputs the corpus must cover with at least this many cases each.
const AT_LEAST: usize = 100;

/// One line of the corpus.
fn cases(entry: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{CORPUS}/{entry}.jsonl")).unwrap_or_else(|e| panic!("{entry}: {e}"));
    let cases: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(cases.len() >= AT_LEAST, "{entry} has {} cases, fewer than {AT_LEAST}", cases.len());
    cases
}

/// A case's body bytes: a string, or parts (strings, `{"b64"}` raw bytes, `{"repeat", "times"}`).
fn body(case: &Value) -> Vec<u8> {
    match &case["body"] {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p {
                    Value::String(s) => out.extend_from_slice(s.as_bytes()),
                    Value::Object(o) if o.contains_key("b64") => {
                        out.extend(base64::engine::general_purpose::STANDARD.decode(o["b64"].as_str().unwrap()).unwrap());
                    }
                    Value::Object(o) => {
                        out.extend(o["repeat"].as_str().unwrap().repeat(usize::try_from(o["times"].as_u64().unwrap()).unwrap()).bytes());
                    }
                    other => panic!("not a body part: {other}"),
                }
            }
            out
        }
        other => panic!("not a body: {other}"),
    }
}

/// What went wrong with one case.
fn failure(case: &Value, what: impl std::fmt::Display) -> String {
    format!("{} / {}: {what}", case["entry"].as_str().unwrap_or_default(), case["case"].as_str().unwrap_or_default())
}

struct Tokens {
    admin: String,
    producer: String,
    user: String,
}

/// Sends one HTTP case; `Err` says what was wrong with the answer, `Ok` the request ids a feature
/// submission had granted (to be followed to DENIED).
async fn send(c: &reqwest::Client, r: &Runner, tokens: &Tokens, selection: u64, case: &Value) -> Result<Vec<String>, String> {
    let method = reqwest::Method::from_bytes(case["method"].as_str().unwrap().as_bytes()).unwrap();
    let path = case["path"].as_str().unwrap().replace("{selection}", &selection.to_string());
    let mut request = c.request(method, r.url(&path)).timeout(Duration::from_secs(30));
    let authorization = match case["role"].as_str().unwrap() {
        "admin" => format!("Bearer {}", tokens.admin),
        "producer" => format!("Bearer {}", tokens.producer),
        "user" => format!("Bearer {}", tokens.user),
        _ => case["authorization"].as_str().unwrap().to_owned(),
    };
    if let Ok(value) = reqwest::header::HeaderValue::from_bytes(authorization.as_bytes()) {
        request = request.header("authorization", value);
    }
    let bytes = body(case);
    if bytes.len() > OVER_THE_LIMIT {
        return head_only(r, case["method"].as_str().unwrap(), &path, bytes.len(), &authorization).await;
    }
    let content_type = case.get("content_type").and_then(Value::as_str).unwrap_or(if bytes.is_empty() { "" } else { "application/json" });
    if !content_type.is_empty() {
        request = request.header("content-type", content_type);
    }
    if !bytes.is_empty() {
        request = request.body(bytes);
    }
    let res = request.send().await.map_err(|e| format!("no answer: {e}"))?;
    let status = res.status().as_u16();
    let problem = res.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    let text = res.text().await.unwrap_or_default();
    let entry = case["entry"].as_str().unwrap();
    if entry == "http-tokens" {
        return if status == 401 && problem { Ok(vec![]) } else { Err(format!("{status} (not a 401 problem): {text:.300}")) };
    }
    if entry.starts_with("http-features-") && status == 202 {
        // Checked further by ingest: every request granted here must end DENIED.
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("202 without a JSON answer: {e}"))?;
        return Ok(answer["granted"].as_array().into_iter().flatten().filter_map(|g| g["requestId"].as_str().map(str::to_owned)).collect());
    }
    if (400..500).contains(&status) && problem { Ok(vec![]) } else { Err(format!("{status} (not a 4xx problem): {text:.300}")) }
}

/// Bodies above API Gateway's 10 MB are announced, not sent: the runner answers 413 from the head
/// alone and closes, which a client still writing the body may see as a reset instead of the answer.
const OVER_THE_LIMIT: usize = 10 * 1024 * 1024;

/// Sends only the head of a request announcing `length` bytes; the answer must be a 413 problem.
async fn head_only(r: &Runner, method: &str, path: &str, length: usize, authorization: &str) -> Result<Vec<String>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = r.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut answer)).await.map_err(|_| "no answer in 30 s".to_owned())?;
    let answer = String::from_utf8_lossy(&answer[..n.map_err(|e| e.to_string())?]).into_owned();
    if answer.starts_with("HTTP/1.1 413") && answer.to_ascii_lowercase().contains("application/problem+json") {
        Ok(vec![])
    } else {
        Err(format!("not a 413 problem: {answer:.300}"))
    }
}

/// Every entry's cases sent over HTTP, 8 at a time; returns the failures.
async fn replay_http(c: &reqwest::Client, r: &Runner, tokens: &Tokens, selection: u64) -> (Vec<String>, usize) {
    let entries = [
        "http-features-create",
        "http-features-patch",
        "http-features-delete",
        "http-features-notify",
        "http-models",
        "http-recipients",
        "http-storage-locations",
        "http-notification-settings",
        "http-basket-selection",
        "http-basket-upload",
        "http-basket-file-filters",
        "http-basket-processing",
        "http-orders-create",
        "http-orders-search",
        "http-quotas",
        "http-tokens",
        "http-paths",
    ];
    let all: Vec<Value> = entries.iter().flat_map(|e| cases(e)).collect();
    let total = all.len();
    let outcomes: Vec<(Value, Result<Vec<String>, String>)> = futures::stream::iter(all)
        .map(|case| async move {
            let outcome = send(c, r, tokens, selection, &case).await;
            (case, outcome)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failures = Vec::new();
    let mut granted = Vec::new();
    for (case, outcome) in outcomes {
        match outcome {
            Ok(ids) => granted.extend(ids.into_iter().map(|id| (case.clone(), id))),
            Err(e) => failures.push(failure(&case, e)),
        }
    }
    // Granted submissions: each request ends DENIED (by ingest, naming what is wrong).
    for (case, id) in granted {
        let url = r.url(&format!("/features/requests/{id}"));
        let producer = &tokens.producer;
        let state = wait_for("the granted request to end", Duration::from_secs(30), || async {
            let v: Value = c.get(&url).bearer_auth(producer).send().await.ok()?.json().await.ok()?;
            ["DENIED", "SUCCESS", "ERROR"].contains(&v["state"].as_str()?).then_some(v)
        })
        .await;
        if state["state"] != "DENIED" {
            failures.push(failure(&case, format!("granted, then {}", state)));
        }
    }
    (failures, total)
}

/// Sends every case of an SQS entry to its queue (each with its own request id), through a second
/// connection to the data directory as a producer's process would.
async fn send_sqs(backend: &Backend, entry: &str) -> Vec<Value> {
    let cases = cases(entry);
    for chunk in cases.chunks(10) {
        let queue = chunk[0]["queue"].as_str().unwrap();
        let messages = chunk
            .iter()
            .map(|case| {
                let text = String::from_utf8(body(case)).expect("an SQS body is text");
                let mut m = OutgoingMessage::new(text);
                for (k, v) in case["attributes"].as_object().unwrap() {
                    m = m.attribute(k, v.as_str().unwrap());
                }
                if entry == "sqs-feature" {
                    m = m.attribute("regards.request.id", format!("corpus-{}", case["case"].as_str().unwrap()));
                }
                m
            })
            .collect();
        backend.queue.send_batch(queue, messages).await.unwrap();
    }
    cases
}

/// Drains `queue`, up to `limit`, until it has given `count` messages; returns them.
async fn collect(backend: &Backend, queue: &str, count: usize, limit: Duration) -> Vec<granary_ports::ReceivedMessage> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    while got.len() < count && Instant::now() < deadline {
        let batch = backend.queue.receive(queue, 10, None, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        backend.queue.delete_batch(queue, batch.iter().map(|m| m.receipt_handle.clone()).collect()).await.unwrap();
        got.extend(batch);
    }
    got
}

/// Every file under `root`, relative to it.
fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn every_corpus_input_is_refused_cleanly() {
    // The data directory inside a directory of its own: anything written beside it escaped.
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let r = Runner::start(
        &dir,
        &[
            ("GRANARY_OUTBOUND_HOSTS", "files.example.invalid,hooks.example.invalid"),
            ("GRANARY_OUTBOUND_INTERNAL", ""),
            ("GRANARY_STORAGE_SOURCE_BUCKETS", "incoming"),
        ],
    );
    let c = client();
    let tokens = Tokens {
        admin: token(&dir, "root@example.org", &["--admin"]),
        producer: token(&dir, "producer@example.org", &["--groups", "producer"]),
        user: token(&dir, "ann@example.org", &["--groups", "s2"]),
    };
    // What the valid inputs the corpus breaks would name: models, a dataset with one product, a
    // basket holding it.
    define_model(&c, &r, &dir, "M", &model_m()).await;
    define_order_models(&c, &r, &tokens.admin).await;
    let catalog = json!({"metadata": {"sessionOwner": "corpus", "session": "setup"}, "features": [
        {"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
         "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}},
        {"type": "Feature", "id": "corpus-product", "entityType": "DATA", "model": "P", "tags": ["S2"],
         "geometry": {"type": "Point", "coordinates": [1, 43]}, "properties": {},
         "files": [{"locations": [{"storage": "online", "url": "s3://storage/online/p"}], "attributes": {"dataType": "RAWDATA",
            "mimeType": "application/zip", "filename": "p.zip", "filesize": 3, "algorithm": "MD5", "checksum": "0123456789abcdef0123456789abcdef"}}]}
    ]});
    assert_eq!(c.post(r.url("/features")).bearer_auth(&tokens.admin).json(&catalog).send().await.unwrap().status(), 202);
    wait_for("the product in the catalog", Duration::from_secs(30), || async {
        let v: Value = c.get(r.url("/datasets/S2/products")).bearer_auth(&tokens.user).send().await.ok()?.json().await.ok()?;
        (v["content"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let basket: Value = c
        .post(r.url("/order/basket/selection"))
        .bearer_auth(&tokens.user)
        .json(&json!({"datasetUrn": "S2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let selection = basket["datasetSelections"][0]["id"].as_u64().expect("a selection");

    let backend = open(&dir);
    let started = Instant::now();
    let (mut failures, http_cases) = replay_http(&c, &r, &tokens, selection).await;
    let http_secs = started.elapsed().as_secs_f64();

    // Feature request messages: one DENIED event each, nothing granted.
    let sent = send_sqs(&backend, "sqs-feature").await;
    let events = collect(&backend, "feature-response", usize::MAX, Duration::from_secs(1)).await;
    let mut answers: HashMap<String, Vec<String>> = HashMap::new();
    let mut pending: BTreeSet<String> = sent.iter().map(|c| format!("corpus-{}", c["case"].as_str().unwrap())).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = events;
    while !pending.is_empty() && Instant::now() < deadline {
        for m in seen.drain(..) {
            let v: Value = serde_json::from_str(&m.body).unwrap();
            if let Some(id) = v["requestId"].as_str() {
                answers.entry(id.to_owned()).or_default().push(v["state"].as_str().unwrap_or_default().to_owned());
                if v["state"] == "DENIED" || v["state"] == "GRANTED" {
                    pending.remove(id);
                }
            }
        }
        seen = collect(&backend, "feature-response", 1000, Duration::from_millis(200)).await;
    }
    for case in &sent {
        let id = format!("corpus-{}", case["case"].as_str().unwrap());
        match answers.get(&id).map(Vec::as_slice) {
            Some([first, ..]) if first == "DENIED" => {}
            other => failures.push(failure(case, format!("answered {other:?}, not DENIED"))),
        }
    }
    // Acknowledgements and storage events: each dead-lettered with its reason.
    for (entry, dead_letter) in [("sqs-ack", "feature-ack-dead-letter"), ("sqs-storage-ready", "storage-ready-dead-letter")] {
        let sent = send_sqs(&backend, entry).await;
        let dead = collect(&backend, dead_letter, sent.len(), Duration::from_secs(60)).await;
        if dead.len() != sent.len() {
            failures.push(format!("{entry}: {} of {} inputs dead-lettered", dead.len(), sent.len()));
        }
        if let Some(m) = dead.iter().find(|m| m.attributes.values().all(|v| v.is_empty())) {
            failures.push(format!("{entry}: a dead-lettered input without its reason: {:.200}", m.body));
        }
    }

    // Still up and unharmed: alive, healthy, no order made from the basket, nothing written outside.
    let health = c.get(r.url("/health")).send().await.expect("granary-local still answers");
    assert_eq!(health.status(), 200);
    let orders: Value = c.get(r.url("/user/orders")).bearer_auth(&tokens.user).send().await.unwrap().json().await.unwrap();
    if orders["content"] != json!([]) {
        failures.push(format!("an order was made from the basket: {:.300}", orders["content"]));
    }
    let outside: Vec<String> = files_under(outer.path()).into_iter().filter(|f| !f.starts_with("data/")).collect();
    assert!(outside.is_empty(), "written outside the data directory: {outside:?}");
    let traversal: Vec<String> = files_under(&dir).into_iter().filter(|f| f.contains("passwd") || f.contains("..")).collect();
    assert!(traversal.is_empty(), "paths from the corpus reached the disk: {traversal:?}");

    println!(
        "corpus: {http_cases} HTTP inputs in {http_secs:.1} s, {} feature messages, all refused; {} failures",
        sent.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{} inputs not refused cleanly:\n{}", failures.len(), failures.join("\n"));
}
