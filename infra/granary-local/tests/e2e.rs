//! granary-local driven as a user drives it: the real binary, its HTTP API, its tokens and its queues.
//! A second connection to the same data directory (as another process would open it) feeds and
//! inspects the queues and tables.

use granary_embedded::{Embedded, EmbeddedOptions};
use granary_lambda::Config;
use granary_ports::{Backend, Key, OutgoingMessage, Query};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "e2e/clock.rs"]
mod clock;
#[path = "e2e/corpus.rs"]
mod corpus;
#[path = "e2e/duplicates.rs"]
mod duplicates;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/security.rs"]
mod security;
#[path = "e2e/throttling.rs"]
mod throttling;

const BIN: &str = env!("CARGO_BIN_EXE_granary-local");

/// A running granary-local, killed when dropped.
struct Runner {
    child: Child,
    base: String,
    /// The lines it logged (warnings and errors: the tests run it with `GRANARY_LOG=warn`).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Runner {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Runner {
        Self::start_with(dir, &[], env)
    }

    fn start_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Runner {
        Self::start_listening(dir, "127.0.0.1:0", args, env)
    }

    fn start_listening(dir: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Runner {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(args)
            .env("GRANARY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start granary-local");
        let stdout = child.stdout.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // Held from here, so that the child is killed if it never says where it listens.
        let mut runner = Runner { child, base: String::new(), log: log.clone() };
        let mut lines = BufReader::new(stdout).lines();
        // Log lines (JSON) may come before the one naming the address: pollers start at once.
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")).filter(|_| line.contains("listening on")) {
                runner.base = url.to_owned();
                break;
            }
            log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
        assert!(!runner.base.is_empty(), "granary-local exited without listening: {:?}", log.lock().unwrap_or_else(|p| p.into_inner()));
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        runner
    }

    /// The logged lines that contain `text`.
    fn logged(&self, text: &str) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|l| l.contains(text)).cloned().collect()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(dir: &Path, user: &str, extra: &[&str]) -> String {
    let out = Command::new(BIN).args(["token", "--user", user, "--data-dir"]).arg(dir).args(extra).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Another connection to the runner's data directory.
fn open(dir: &Path) -> Backend {
    let resources = granary_local::resources::load(None).unwrap();
    Embedded::open(EmbeddedOptions::new(dir, resources)).unwrap().backend()
}

/// A copy of the template in `dir` with the visibility timeout of the feature queues set to `secs`.
fn template_with_feature_visibility(dir: &Path, secs: u32) -> std::path::PathBuf {
    template_with_visibility(dir, "Feature", secs)
}

/// A copy of the template in `dir` with the visibility timeout of the queues whose logical id starts
/// with `prefix` set to `secs`.
fn template_with_visibility(dir: &Path, prefix: &str, secs: u32) -> std::path::PathBuf {
    template_with_visibilities(dir, &[(prefix, secs)])
}

/// A copy of the template in `dir` where each queue whose logical id starts with one of the prefixes
/// gets that prefix's visibility timeout (the last matching prefix wins).
fn template_with_visibilities(dir: &Path, rules: &[(&str, u32)]) -> std::path::PathBuf {
    let text = granary_resources::TEMPLATE;
    let mut out = String::new();
    let mut visibility = None;
    for line in text.lines() {
        if !line.starts_with("    ") && line.starts_with("  ") && line.trim_end().ends_with(':') {
            let id = line.trim().trim_end_matches(':');
            visibility = id.ends_with("Queue").then(|| rules.iter().rev().find(|(p, _)| id.starts_with(p)).map(|(_, s)| *s)).flatten();
        }
        match visibility {
            Some(secs) if line.trim_start().starts_with("VisibilityTimeout:") => {
                out.push_str(&format!("      VisibilityTimeout: {secs}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert_ne!(out, format!("{text}\n"), "the template has queues matching {rules:?} with a visibility timeout");
    let path = dir.join("template.yaml");
    std::fs::write(&path, out).unwrap();
    path
}

/// A copy of the template in `dir` for fault tests: visibility timeouts of 3 s, so that what a failed
/// or killed invocation held comes back within seconds, but 10 s for order-create, whose expansion
/// holds a lease (set to 8 s by [`SHORT_ORDER_LEASE`], and renewed at each checkpoint): as in the
/// template, the redelivery of a killed expansion mostly comes after its lease ran out, or one
/// delivery later, rather than finding the order held again and again until the message is
/// dead-lettered.
fn fault_test_template(dir: &Path) -> std::path::PathBuf {
    template_with_visibilities(dir, &[("", 3), ("OrderCreate", 10)])
}

/// The order lease for [`fault_test_template`]'s runners.
const SHORT_ORDER_LEASE: (&str, &str) = ("GRANARY_ORDER_LEASE_SECS", "8");

/// Adds a queue named `mirror` (a recipient's own) to the template at `path`, or to a copy of the
/// built-in one written there when it does not exist yet; returns `path`.
fn with_mirror_queue(path: std::path::PathBuf) -> std::path::PathBuf {
    let template = std::fs::read_to_string(&path).unwrap_or_else(|_| granary_resources::TEMPLATE.to_owned());
    std::fs::write(&path, template.replacen("Resources:\n", "Resources:\n  MirrorQueue:\n    Type: AWS::SQS::Queue\n\n", 1)).unwrap();
    path
}

/// Waits for `check` to return `Some`, up to `limit`, looking again every 50 ms.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small deterministic generator (the seed is printed, so a failing run can be replayed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Places Ann's order of the products `ids` once they are stored; `None` while it cannot be (the runner
/// down, the products not stored yet). A lost answer is safe: `label` is unique, so a second try is
/// refused and the order is found by its label.
async fn place_order(c: &reqwest::Client, r: &Runner, ann: &str, ids: &[String], label: &str) -> Option<String> {
    // Only once the four are stored: ordered before, their files would be the producer's references.
    for id in ids {
        let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid(id));
        let product: Value = c.get(r.url(&format!("/products/{urn}"))).bearer_auth(ann).send().await.ok()?.json().await.ok()?;
        if product["files"][0]["reference"] != false {
            return None;
        }
    }
    let res = c.post(r.url("/order/basket/selection")).bearer_auth(ann).json(&json!({"entityIdsToInclude": ids}));
    let basket: Value = res.send().await.ok()?.json().await.ok()?;
    if basket["datasetSelections"][0]["objectsCount"].as_u64() != Some(ids.len() as u64) {
        let _ = c.delete(r.url("/order/basket")).bearer_auth(ann).send().await;
        return None;
    }
    let res = c.post(r.url("/user/orders")).bearer_auth(ann).json(&json!({"label": label})).send().await.ok()?;
    if res.status() == 201 {
        return res.json::<Value>().await.ok()?["id"].as_str().map(str::to_owned);
    }
    let mine: Value = c.get(r.url("/user/orders")).bearer_auth(ann).send().await.ok()?.json().await.ok()?;
    mine["content"].as_array()?.iter().find(|o| o["label"] == label).and_then(|o| o["id"].as_str()).map(str::to_owned)
}

/// What a user downloading an order's files keeps: the links served (302), and those whose answer was
/// an error or never came. A failed link is tried again even once its file is no longer listed
/// AVAILABLE: its download may have been recorded before the answer failed, as a user who saw the
/// error would try it again.
#[derive(Debug, Default)]
struct Downloads {
    done: BTreeSet<String>,
    failed: BTreeSet<String>,
}

impl Downloads {
    fn len(&self) -> usize {
        self.done.len()
    }
}

/// Downloads (follows the Granary link of) every file of `order` available now, and every link that
/// failed before.
async fn download_available(c: &reqwest::Client, r: &Runner, ann: &str, order: &str, downloads: &mut Downloads) {
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut links: BTreeSet<String> = std::mem::take(&mut downloads.failed);
    if let Ok(res) = c.get(r.url(&format!("/orders/{order}/files/available"))).bearer_auth(ann).send().await
        && let Ok(page) = res.json::<Value>().await
    {
        let available = page["content"].as_array().into_iter().flatten().filter(|f| f["state"] == "AVAILABLE");
        links.extend(available.filter_map(|f| f["download"].as_str().map(str::to_owned)));
    }
    for link in links {
        match no_redirect.get(r.url(&link)).bearer_auth(ann).send().await {
            Ok(res) if res.status() == 302 => downloads.done.insert(link),
            _ => downloads.failed.insert(link),
        };
    }
}

/// A loopback address nobody listens on, for a runner restarted on the same address.
fn free_loopback_address() -> String {
    format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// The ordering set-up of the fault tests: the order models, a queue recipient `mirror` told of
/// everything, and two users, the admin and Ann (group s2); returns their tokens.
async fn ordering_with_a_mirror(c: &reqwest::Client, r: &Runner, dir: &Path) -> (String, String) {
    let admin = token(dir, "root@example.org", &["--admin"]);
    let ann = token(dir, "ann@example.org", &["--groups", "s2"]);
    define_order_models(c, r, &admin).await;
    let mirror = json!({"target": {"type": "queue", "queue": "mirror"}, "ackRequired": false});
    assert_eq!(c.put(r.url("/recipients/mirror")).bearer_auth(&admin).json(&mirror).send().await.unwrap().status(), 201);
    (admin, ann)
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends only the head of a POST declaring `length` bytes, and returns what the server answers.
fn raw_post_headers(r: &Runner, path: &str, length: usize, token: &str) -> String {
    use std::io::{Read, Write};
    let addr = r.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The model the tests' features name: two optional attributes.
fn model_m() -> Value {
    json!({"name": "M", "type": "DATA", "attributes": [
        {"name": "n", "type": "INTEGER", "optional": true},
        {"name": "added", "type": "STRING", "optional": true}
    ]})
}

/// Defines a model over HTTP as an admin.
async fn define_model(c: &reqwest::Client, r: &Runner, dir: &Path, name: &str, definition: &Value) {
    let admin = token(dir, "root@example.org", &["--admin"]);
    let res = c.put(r.url(&format!("/models/{name}"))).bearer_auth(&admin).json(definition).send().await.unwrap();
    assert!(res.status() == 201 || res.status() == 200, "model {name} refused: {}", res.text().await.unwrap());
}

fn creation_collection(ids: &[&str]) -> Value {
    json!({
        "metadata": {"sessionOwner": "e2e", "session": "s1", "priority": "NORMAL"},
        "features": ids.iter().map(|id| json!({"type": "Feature", "id": id, "entityType": "DATA", "model": "M", "geometry": null, "properties": {"n": 1}})).collect::<Vec<_>>()
    })
}

/// Submits one creation collection of `ids` and waits until its first granted request is SUCCESS;
/// returns the request.
/// Open models for ordering: `P` for products (DATA), `D` for datasets (DATASET).
async fn define_order_models(c: &reqwest::Client, r: &Runner, admin: &str) {
    for (name, kind) in [("P", "DATA"), ("D", "DATASET")] {
        let res = c
            .put(r.url(&format!("/models/{name}")))
            .bearer_auth(admin)
            .json(&json!({"type": "object", "x-granary-type": kind}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "model {name}: {}", res.status());
    }
}

async fn create_and_wait(c: &reqwest::Client, r: &Runner, token: &str, ids: &[&str]) -> Value {
    submit_and_wait(c, r, token, reqwest::Method::POST, &creation_collection(ids)).await
}

/// Submits a collection with `method` on `/features` and waits until its first granted request is
/// SUCCESS; returns the request.
async fn submit_and_wait(c: &reqwest::Client, r: &Runner, token: &str, method: reqwest::Method, body: &Value) -> Value {
    submit_to_and_wait(c, r, token, method, "/features", body).await
}

/// Submits a collection with `method` on `path` and waits until its first granted request is SUCCESS.
async fn submit_to_and_wait(c: &reqwest::Client, r: &Runner, token: &str, method: reqwest::Method, path: &str, body: &Value) -> Value {
    let res = c.request(method, r.url(path)).bearer_auth(token).json(body).send().await.unwrap();
    assert_eq!(res.status(), 202, "submission refused");
    let info: Value = res.json().await.unwrap();
    let url = r.url(&format!("/features/requests/{}", info["granted"][0]["requestId"].as_str().expect("a granted request")));
    wait_for("the request to succeed", Duration::from_secs(30), || async {
        let v: Value = c.get(&url).bearer_auth(token).send().await.ok()?.json().await.ok()?;
        (v["state"] == "SUCCESS").then_some(v)
    })
    .await
}

#[tokio::test]
async fn serves_health_and_jwks_and_refuses_forged_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner::start(dir.path(), &[]);
    let c = client();
    let health: Value = c.get(r.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "UP");
    // SQLite's share of the runner's memory (the soak benchmark sets it apart): its caches hold the
    // schema and pages read at start, so more than nothing.
    assert!(health["sqliteMemoryBytes"].as_i64().is_some_and(|n| n > 0), "{health}");
    // The runner allocates through jemalloc, whose statistics the soak benchmark reads: memory in use
    // (some, at the least the backend's), within what the allocator holds resident.
    let (allocated, resident) = (health["heapAllocatedBytes"].as_u64(), health["heapResidentBytes"].as_u64());
    assert!(allocated.is_some_and(|a| a > 0) && resident >= allocated, "{health}");
    let jwks: Value = c.get(r.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "RS256");

    let probe = r.url("/features/requests/none");
    let good = token(dir.path(), "ann@example.org", &[]);
    let ok = c.get(&probe).bearer_auth(&good).send().await.unwrap();
    assert_eq!(ok.status(), 404, "a valid token reaches the handler, which knows no such request");

    let missing = c.get(&probe).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    // Forge tokens: expired, signed by another key, alg none, HS256 keyed with the public key.
    let pem = std::fs::read(dir.path().join("keys/jwt-rs256.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64| json!({"iss": "granary-local", "aud": "granary", "sub": "ann@example.org", "exp": exp, "iat": now - 100});
    let expired = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims(now - 10), &key).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other_key = token(other_dir.path(), "ann@example.org", &[]);
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(now + 600)));
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(now + 600),
        &jsonwebtoken::EncodingKey::from_secret(jwks["keys"][0]["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    let mut tampered = good.clone();
    let mid = tampered.find('.').unwrap() + 5;
    tampered.replace_range(mid..mid + 1, if &good[mid..mid + 1] == "A" { "B" } else { "A" });
    for (name, t) in [
        ("expired", expired),
        ("another key", other_key),
        ("alg none", alg_none),
        ("HS256", hs),
        ("tampered", tampered),
        ("garbage", "abc".into()),
    ] {
        let res = c.get(&probe).bearer_auth(&t).send().await.unwrap();
        assert_eq!(res.status(), 401, "{name} token must be refused");
    }
}

#[tokio::test]
async fn http_creation_goes_through_the_queue_to_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner::start(dir.path(), &[]);
    let c = client();
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    let reader = token(dir.path(), "bob@example.org", &[]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;

    let forbidden = c.post(r.url("/features")).bearer_auth(&reader).json(&creation_collection(&["p1"])).send().await.unwrap();
    assert_eq!(forbidden.status(), 403, "a user without the producer group cannot submit");
    let bad = c.post(r.url("/features")).bearer_auth(&producer).body("{not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.unwrap();
    assert!(problem["errors"][0].as_str().unwrap().starts_with("body:"), "{problem}");

    let mut body = creation_collection(&["product-0001", ""]);
    body["features"][1]["entityType"] = json!("THING");
    let res = c.post(r.url("/features")).bearer_auth(&producer).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["granted"].as_array().unwrap().len(), 1);
    assert_eq!(info["denied"][0]["errors"].as_array().unwrap().len(), 2, "blank id and unknown entity type: {info}");
    let request_id = info["granted"][0]["requestId"].as_str().unwrap().to_owned();

    let url = r.url(&format!("/features/requests/{request_id}"));
    let record: Value = wait_for("the request to succeed", Duration::from_secs(20), || async {
        let v: Value = c.get(&url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
        (v["state"] == "SUCCESS").then_some(v)
    })
    .await;
    let v1 = "URN:FEATURE:DATA:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1";
    assert_eq!(record["urn"], v1);
    assert_eq!(record["requestOwner"], "ann@example.org");
    let other = c.get(&url).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(other.status(), 404, "another user does not learn the request exists");

    create_and_wait(&c, &r, &producer, &["product-0001"]).await;
    let f1: Value = c.get(r.url(&format!("/features/{v1}"))).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!(f1["last"], false, "V1 is no longer the latest");
    let f2: Value =
        c.get(r.url(&format!("/features/{}", v1.replace(":V1", ":V2")))).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!(f2["last"], true);
    assert_eq!(f2["feature"]["properties"]["n"], 1);
    let bad_urn = c.get(r.url("/features/URN:FEATURE:DATA:granary:nope:V1")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(bad_urn.status(), 400);
    // A body over API Gateway's 10 MB is refused from its declared length, before it is read.
    let huge = raw_post_headers(&r, "/features", 11 * 1024 * 1024, &producer);
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
    assert!(huge.contains("application/problem+json"), "{huge}");
    let several_mb = json!({"metadata": {"sessionOwner": "e2e", "session": "s1"}, "features": [{"type": "Feature", "id": "big", "entityType": "DATA", "model": "M", "properties": {"added": "x".repeat(3 * 1024 * 1024)}}]});
    let res = c.post(r.url("/features")).bearer_auth(&producer).json(&several_mb).send().await.unwrap();
    assert_eq!(res.status(), 400, "a feature too large for a queue message is denied at once");
}

#[tokio::test]
async fn producer_message_on_sqs_is_answered_on_the_response_queue() {
    let dir = tempfile::tempdir().unwrap();
    // The example stores its RAWDATA file in the location "nearline-archive".
    let locations = r#"{"nearline-archive": {"bucket": "storage", "prefix": "archive", "class": "NEARLINE"}}"#;
    let r = Runner::start(dir.path(), &[("GRANARY_STORAGE_LOCATIONS", locations)]);
    let model: Value = serde_json::from_str(include_str!("fixtures/model-s2-l1c.json")).unwrap();
    define_model(&client(), &r, dir.path(), "S2_L1C", &model).await;
    let backend = open(dir.path());
    let example: Value = serde_json::from_str(include_str!("fixtures/sqs-creation.json")).unwrap();
    let mut msg = OutgoingMessage::new(example["body"].to_string());
    for (k, v) in example["attributes"].as_object().unwrap() {
        msg = msg.attribute(k, v.as_str().unwrap());
    }
    let config = Config::from_env();
    backend.queue.send_batch(&config.feature_queues[0], vec![msg]).await.unwrap();
    let request_id = example["attributes"]["regards.request.id"].as_str().unwrap();
    let mut states = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while states.len() < 2 {
        assert!(Instant::now() < deadline, "timed out waiting for GRANTED and ERROR on the response queue: {states:?}");
        for m in backend.queue.receive(&config.response_queue, 10, None, Duration::from_millis(200)).await.unwrap() {
            let e: Value = serde_json::from_str(&m.body).unwrap();
            if e["requestId"] == request_id {
                assert_eq!(
                    e["urn"], "URN:FEATURE:DATA:granary:a2beb1a6-a38c-3ac4-9fa5-89e495df2b02:V1",
                    "the URN the brief's example names"
                );
                states.insert(e["state"].as_str().unwrap().to_owned());
                if e["state"] == "ERROR" {
                    // Its source bucket does not exist here: the storage error names the file and why.
                    let error = e["errors"][0].as_str().unwrap();
                    assert!(
                        error.contains("S2A_MSIL1C_20261123T101531_N0511_R065_T31TCJ.zip") && error.contains("no such object"),
                        "{error}"
                    );
                }
            }
        }
    }
    assert_eq!(states, BTreeSet::from(["GRANTED".to_owned(), "ERROR".to_owned()]));
}

#[tokio::test]
async fn kill_9_mid_batch_then_restart_processes_every_message_once() {
    const DISTINCT: usize = 300;
    const SHARED: usize = 10;
    const PER_SHARED: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // A received batch lost with the process comes back after the visibility timeout: 2 s here.
    let template = template_with_feature_visibility(scratch.path(), 2);
    let template = template.to_str().unwrap();
    let env = [("GRANARY_LOCAL_TEMPLATE", template), ("GRANARY_OUTBOX_GRACE_MS", "500"), ("GRANARY_LOCAL_RELAY_EVERY_SECS", "1")];
    let backend = open(dir.path());
    let config = Config::from_env();
    let m = model_m();
    let compiled = granary_domain::model::compile_model("M", &m).unwrap();
    granary_stores::models::ModelStore::new(&config.features_table).put(&backend, &m, &compiled, "admin").await.unwrap();
    let mut expected_versions: HashMap<String, usize> = HashMap::new();
    let mut messages = Vec::new();
    for i in 0..DISTINCT {
        let p = format!("distinct-{i}");
        expected_versions.insert(p.clone(), 1);
        messages.push((format!("r{i}"), p));
    }
    for s in 0..SHARED {
        for j in 0..PER_SHARED {
            let p = format!("shared-{s}");
            *expected_versions.entry(p.clone()).or_default() += 1;
            messages.push((format!("s{s}-{j}"), p));
        }
    }
    for chunk in messages.chunks(10) {
        let batch = chunk
            .iter()
            .map(|(rid, p)| {
                let body = json!({"metadata": {"sessionOwner": "kill", "session": "s"}, "feature": {"type": "Feature", "id": p, "entityType": "DATA", "model": "M", "properties": {}}});
                OutgoingMessage::new(body.to_string()).attribute("regards.request.type", "CREATION").attribute("regards.request.id", rid.clone())
            })
            .collect();
        backend.queue.send_batch(&config.feature_queues[1], batch).await.unwrap();
    }
    let total = messages.len() as u64;

    let runner = Runner::start(dir.path(), &env);
    wait_for("some messages processed", Duration::from_secs(30), || async {
        let d = backend.queue.depth(&config.feature_queues[1]).await.ok()?;
        (d.visible < total * 3 / 4).then_some(())
    })
    .await;
    runner.kill9();
    let left = backend.queue.depth(&config.feature_queues[1]).await.unwrap();
    assert!(left.total() > 0, "the kill happened with work left: {left:?}");

    let _runner = Runner::start(dir.path(), &env);
    wait_for("every queue drained", Duration::from_secs(60), || async {
        let mut n = 0;
        for q in &config.feature_queues {
            n += backend.queue.depth(q).await.ok()?.total();
        }
        (n == 0).then_some(())
    })
    .await;

    // Every request recorded once, SUCCESS.
    for (rid, p) in &messages {
        let item = backend
            .table
            .get(&config.requests_table, &Key::new(format!("R#{rid}"), "R"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("request {rid} lost"));
        assert_eq!(item.get_str("state"), Some("SUCCESS"), "{rid}");
        assert_eq!(item.get_str("providerId"), Some(p.as_str()));
    }
    // No duplicate version: each providerId has exactly as many versions as creations, numbered 1..=n.
    for (p, n) in &expected_versions {
        let pk = format!("F#{}", granary_domain::entity_uuid(p));
        let page = backend.table.query(Query::partition(&config.features_table, pk).limit(1000)).await.unwrap();
        let sks: Vec<String> = page.items.iter().map(|i| i.key.sk.clone()).collect();
        let want: Vec<String> = (1..=*n).map(|v| format!("V{v:03}")).collect();
        assert_eq!(sks, want, "versions of {p}");
        assert_eq!(page.items.iter().filter(|i| i.get("last") == Some(&json!(true))).count(), 1, "one latest version of {p}");
    }
    // Every event delivered (after dropping redeliveries by id), relayed from the outbox if need be.
    let mut events: BTreeMap<String, Value> = BTreeMap::new();
    let want_events = messages.len() * 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    while events.len() < want_events {
        assert!(Instant::now() < deadline, "timed out waiting for every response event: {} of {want_events}", events.len());
        let got = backend.queue.receive(&config.response_queue, 10, None, Duration::from_millis(200)).await.unwrap();
        for m in &got {
            let e: Value = serde_json::from_str(&m.body).unwrap();
            events.insert(e["eventId"].as_str().unwrap().to_owned(), e);
        }
        if !got.is_empty() {
            backend.queue.delete_batch(&config.response_queue, got.into_iter().map(|m| m.receipt_handle).collect()).await.unwrap();
        }
    }
    assert_eq!(events.len(), want_events, "exactly GRANTED and SUCCESS per request");
    let resources = granary_local::resources::load(None).unwrap();
    let dlq = resources.queue(&config.feature_queues[1]).and_then(|q| q.dead_letter_queue.clone()).expect("the template gives a DLQ");
    assert_eq!(backend.queue.depth(&dlq).await.unwrap().total(), 0, "nothing in the dead-letter queue");
}

#[tokio::test]
async fn sigint_stops_cleanly_without_losing_queued_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Runner::start(dir.path(), &[]);
    let pid = r.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = wait_for("granary-local to exit", Duration::from_secs(20), || {
        let s = r.child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "clean exit on SIGINT: {status:?}");
    let backend = open(dir.path());
    let config = Config::from_env();
    backend.queue.send_batch(&config.feature_queues[2], vec![OutgoingMessage::new("{}")]).await.unwrap();
    assert_eq!(backend.queue.depth(&config.feature_queues[2]).await.unwrap().visible, 1, "a stopped runner takes nothing");
}

#[tokio::test]
async fn editing_the_template_changes_the_local_visibility_timeout() {
    let scratch = tempfile::tempdir().unwrap();
    let edited = granary_local::resources::load(Some(&template_with_feature_visibility(scratch.path(), 1))).unwrap();
    let built_in = granary_local::resources::load(None).unwrap();
    let config = Config::from_env();
    let low = &config.feature_queues[2];
    assert_eq!(edited.queue(low).unwrap().visibility_timeout, Duration::from_secs(1));
    assert!(built_in.queue(low).unwrap().visibility_timeout >= Duration::from_secs(30), "the built-in template is untouched");
    // The embedded queue provisioned from the edited copy hides a received message for 1 s, not 120.
    let data = tempfile::tempdir().unwrap();
    let b = Embedded::open(EmbeddedOptions::new(data.path(), edited)).unwrap().backend();
    b.queue.send_batch(low, vec![OutgoingMessage::new("m")]).await.unwrap();
    let first = b.queue.receive(low, 1, None, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    let again = wait_for("the message to come back after the edited timeout", Duration::from_secs(10), || async {
        let got = b.queue.receive(low, 1, None, Duration::ZERO).await.ok()?;
        got.into_iter().next()
    })
    .await;
    assert_eq!(again.receive_count, 2);
}

#[tokio::test]
async fn aws_backend_on_moto_serves_creation_end_to_end() {
    let endpoint = granary_aws::emulator::shared_moto();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("e2e{}-", std::process::id());
    let r = Runner::start_with(
        dir.path(),
        &["--backend", "aws", "--provision"],
        &[
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("GRANARY_AWS_NAME_PREFIX", &prefix),
        ],
    );
    let c = client();
    let health: Value = c.get(r.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["backend"], "aws");
    assert!(health.get("sqliteMemoryBytes").is_none(), "no SQLite on the AWS backend: {health}");
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;
    let record = create_and_wait(&c, &r, &producer, &["on-moto"]).await;
    let urn = record["urn"].as_str().unwrap();
    let feature: Value = c.get(r.url(&format!("/features/{urn}"))).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!(feature["last"], true);
    assert_eq!(feature["feature"]["id"], "on-moto");

    // A file stored into S3: over 8 MiB, so it goes up in a multipart upload, checksum verified.
    use md5::{Digest, Md5};
    let content: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let checksum = hex::encode(Md5::digest(&content));
    let server = source_server(content.clone()).await;
    let mut body = creation_collection(&["stored-on-moto"]);
    body["metadata"]["storages"] = json!([{"pluginBusinessId": "online"}]);
    body["features"][0]["files"] = json!([{"locations": [{"url": format!("{server}/ok")}], "attributes": {"dataType": "RAWDATA",
        "mimeType": "application/octet-stream", "filename": "big.bin", "filesize": content.len(), "algorithm": "MD5", "checksum": checksum}}]);
    let record = submit_and_wait(&c, &r, &producer, reqwest::Method::POST, &body).await;
    let feature: Value = c
        .get(r.url(&format!("/features/{}", record["urn"].as_str().unwrap())))
        .bearer_auth(&producer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(feature["feature"]["files"][0]["locations"][1]["url"], format!("s3://storage/online/{checksum}"));

    // Ordered on DynamoDB, SQS and S3: expanded, dispatched, made available, downloaded through a
    // presigned S3 URL with the stored bytes.
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let user = token(dir.path(), "bob@example.org", &["--groups", "s2"]);
    define_order_models(&c, &r, &admin).await;
    let dataset = json!({"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
                         "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}});
    let product = json!({"type": "Feature", "id": "ordered-on-moto", "entityType": "DATA", "model": "P", "tags": ["S2"], "geometry": null,
        "properties": {}, "files": [{"locations": [{"url": format!("{server}/ok")}], "attributes": {"dataType": "RAWDATA",
        "mimeType": "application/octet-stream", "filename": "big.bin", "filesize": content.len(), "algorithm": "MD5", "checksum": checksum}}]});
    for (feature, storages) in [(dataset, json!([])), (product, json!([{"pluginBusinessId": "online"}]))] {
        let body = json!({"metadata": {"sessionOwner": "e2e", "session": "moto", "storages": storages}, "features": [feature]});
        let done = submit_and_wait(&c, &r, &admin, reqwest::Method::POST, &body).await;
        assert_eq!(done["state"], "SUCCESS", "{done}");
    }
    let res = c
        .post(r.url("/order/basket/selection"))
        .bearer_auth(&user)
        .json(&json!({"entityIdsToInclude": ["ordered-on-moto"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let order: Value = c.post(r.url("/user/orders")).bearer_auth(&user).json(&json!({})).send().await.unwrap().json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    let done = wait_for("the order on moto to be done", Duration::from_secs(60), || async {
        let v: Value = c.get(r.url(&format!("/user/orders/{id}"))).bearer_auth(&user).send().await.ok()?.json().await.ok()?;
        (v["status"] == "DONE").then_some(v)
    })
    .await;
    assert_eq!(done["availableFilesCount"], 1);
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = no_redirect.get(r.url(&format!("/orders/files/{id}.1.0"))).bearer_auth(&user).send().await.unwrap();
    assert_eq!(res.status(), 302);
    let presigned = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(presigned.contains("X-Amz-Signature="), "{presigned}");
    let bytes = c.get(&presigned).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(hex::encode(Md5::digest(&bytes)), checksum);
    let after: Value = c.get(r.url(&format!("/user/orders/{id}"))).bearer_auth(&user).send().await.unwrap().json().await.unwrap();
    assert_eq!(after["suborders"][0]["state"], "FINISHED", "{after}");
}

#[tokio::test]
async fn http_patch_and_deletion_go_through_the_queue_to_ingest() {
    let dir = tempfile::tempdir().unwrap();
    // A recipient "catalog" reading a local queue, for explicit notifications only.
    let scratch = tempfile::tempdir().unwrap();
    let template = granary_resources::TEMPLATE.replacen("Resources:\n", "Resources:\n  CatalogQueue:\n    Type: AWS::SQS::Queue\n\n", 1);
    let template_path = scratch.path().join("template.yaml");
    std::fs::write(&template_path, template).unwrap();
    let template_path = template_path.to_str().unwrap().to_owned();
    {
        let resources = granary_local::resources::load(Some(Path::new(&template_path))).unwrap();
        let backend = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap().backend();
        let catalog = granary_domain::dissemination::Recipient {
            target: granary_domain::dissemination::Target::Queue { queue: "catalog".into() },
            ack_required: false,
            blocking: false,
            filter: granary_domain::dissemination::RecipientFilter { actions: vec!["NOTIFIED".into()], ..Default::default() },
            secret: None,
        };
        granary_stores::dissemination::RecipientStore::new("features").put(&backend, "catalog", &catalog, "admin").await.unwrap();
    }
    let r = Runner::start(dir.path(), &[("GRANARY_LOCAL_TEMPLATE", &template_path)]);
    let c = client();
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;
    let v1 = create_and_wait(&c, &r, &producer, &["product-0001"]).await["urn"].as_str().unwrap().to_owned();
    let v2 = create_and_wait(&c, &r, &producer, &["product-0001"]).await["urn"].as_str().unwrap().to_owned();

    let patch =
        json!({"metadata": {"priority": "HIGH"}, "features": [{"type": "Feature", "urn": v2, "properties": {"n": 2, "added": "yes"}}]});
    let done = submit_and_wait(&c, &r, &producer, reqwest::Method::PATCH, &patch).await;
    assert_eq!(done["type"], "PATCH");
    assert_eq!(done["action"], "UPDATED");
    let f2: Value = c.get(r.url(&format!("/features/{v2}"))).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!(f2["feature"]["properties"], json!({"n": 2, "added": "yes"}));
    assert_eq!(f2["feature"]["history"]["updatedBy"], "ann@example.org");

    let bad = c
        .request(reqwest::Method::PATCH, r.url("/features"))
        .bearer_auth(&producer)
        .json(&json!({"features": [{"properties": {}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "a patch without a urn is refused at once");

    let notify = json!({"featuresUrns": [v2], "priority": "HIGH", "recipients": ["catalog"]});
    let done = submit_to_and_wait(&c, &r, &producer, reqwest::Method::POST, "/features/notifications", &notify).await;
    assert_eq!((done["type"].as_str(), done["action"].as_str()), (Some("NOTIFICATION"), Some("NOTIFIED")));
    let resources = granary_local::resources::load(Some(Path::new(&template_path))).unwrap();
    let backend = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap().backend();
    let notified = wait_for("the notification to reach the catalog recipient", Duration::from_secs(20), || async {
        let got = backend.queue.receive("catalog", 10, None, Duration::from_millis(100)).await.ok()?;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(notified.len(), 1, "one notification, for the recipient named (the automatic ones are filtered out)");
    assert_eq!(notified[0].attributes["granary.event.id"], format!("{v2}:NOTIFIED:{}", done["requestId"].as_str().unwrap()));
    let n: Value = serde_json::from_str(&notified[0].body).unwrap();
    assert_eq!((n["metadata"]["action"].as_str(), n["payload"]["urn"].as_str()), (Some("NOTIFIED"), v2.as_str().into()));
    let bad =
        c.post(r.url("/features/notifications")).bearer_auth(&producer).json(&json!({"featuresUrns": ["URN:x"]})).send().await.unwrap();
    assert_eq!(bad.status(), 400, "an invalid URN is refused at once");

    let done = submit_and_wait(&c, &r, &producer, reqwest::Method::DELETE, &json!({"featuresUrns": [v2], "priority": "LOW"})).await;
    assert_eq!(done["action"], "DELETED");
    let gone = c.get(r.url(&format!("/features/{v2}"))).bearer_auth(&producer).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let f1: Value = c.get(r.url(&format!("/features/{v1}"))).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!(f1["last"], true, "V1 is the latest again");
}

#[tokio::test]
async fn admins_define_models_and_bad_definitions_are_refused_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner::start(dir.path(), &[]);
    let c = client();
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    let model: Value = serde_json::from_str(include_str!("fixtures/model-s2-l1c.json")).unwrap();
    let res = c.put(r.url("/models/S2_L1C")).bearer_auth(&producer).json(&model).send().await.unwrap();
    assert_eq!(res.status(), 403, "only admins define models");
    let res = c.put(r.url("/models/S2_L1C")).bearer_auth(&admin).json(&model).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let res = c.put(r.url("/models/S2_L1C")).bearer_auth(&admin).json(&model).send().await.unwrap();
    assert_eq!(res.status(), 200, "replacing a model");
    let got: Value = c.get(r.url("/models/S2_L1C")).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["revision"], 2);
    assert_eq!(got["type"], "DATA");
    assert_eq!(got["schema"]["properties"]["cloudCover"]["maximum"], 100);
    let bad = json!({"name": "B", "attributes": [{"name": "x", "type": "FLOAT"}, {"name": "y", "type": "STRING", "restriction": {"type": "PATTERN"}}]});
    let res = c.put(r.url("/models/B")).bearer_auth(&admin).json(&bad).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2, "{problem}");
    assert_eq!(c.get(r.url("/models/B")).bearer_auth(&admin).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn admins_list_requests_by_state_and_session_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner::start(dir.path(), &[]);
    let c = client();
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;
    for id in ["a", "b", "c"] {
        create_and_wait(&c, &r, &producer, &[id]).await;
    }
    // Follow the next links, one request a page.
    let mut seen = Vec::new();
    let mut url = r.url("/features/requests?state=SUCCESS&type=CREATION&size=1");
    loop {
        let res = c.get(&url).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let page: Value = res.json().await.unwrap();
        assert!(page["content"].as_array().unwrap().len() <= 1);
        seen.extend(page["content"].as_array().unwrap().iter().map(|r| r["providerId"].as_str().unwrap().to_owned()));
        match page["links"].as_array().unwrap().iter().find(|l| l["rel"] == "next") {
            Some(next) => url = r.url(next["href"].as_str().unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, vec!["a", "b", "c"], "every request once, oldest first");
    let by_session: Value =
        c.get(r.url("/features/requests?sessionOwner=e2e&session=s1")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(by_session["content"].as_array().unwrap().len(), 3);
    assert_eq!(c.get(r.url("/features/requests?state=SUCCESS")).bearer_auth(&producer).send().await.unwrap().status(), 403);
    let bad = c.get(r.url("/features/requests?state=DONE&size=0&type=X")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 3, "every error: {problem}");
    let forged = c.get(r.url("/features/requests?state=SUCCESS&page=bm90LWEtY3Vyc29y")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(forged.status(), 400, "a cursor the API did not hand out is refused");
}

#[tokio::test]
async fn admins_retry_and_delete_requests_in_error_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner::start_with(dir.path(), &["--release-every-secs", "1"], &[]);
    let c = client();
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;
    // Two creations that failed on every delivery reach the dead-letter queue.
    let backend = open(dir.path());
    let body = |id: &str| {
        json!({"metadata": {"sessionOwner": "e2e", "session": "s1", "priority": "HIGH"},
               "feature": {"type": "Feature", "id": id, "entityType": "DATA", "model": "M", "geometry": null, "properties": {"n": 1}}})
        .to_string()
    };
    let dead = |id: &str, request: &str| {
        OutgoingMessage::new(body(id))
            .attribute("regards.request.type", "CREATION")
            .attribute("regards.request.id", request)
            .attribute("regards.request.owner", "ann@example.org")
    };
    backend.queue.send_batch("feature-dead-letter", vec![dead("product-dlq-1", "dlq-1"), dead("product-dlq-2", "dlq-2")]).await.unwrap();
    let get = |id: &'static str| {
        let (c, url, admin) = (c.clone(), r.url(&format!("/features/requests/{id}")), admin.clone());
        async move { c.get(url).bearer_auth(admin).send().await.ok()?.json::<Value>().await.ok() }
    };
    for id in ["dlq-1", "dlq-2"] {
        let rec = wait_for("the dead letter to be recorded in error", Duration::from_secs(20), || async {
            get(id).await.filter(|v| v["state"] == "ERROR")
        })
        .await;
        assert_eq!(rec["step"], "LOCAL_ERROR");
    }

    // Only admins retry; a retried request runs again and succeeds.
    let url = r.url("/features/requests/dlq-1/retry");
    assert_eq!(c.post(&url).bearer_auth(&producer).send().await.unwrap().status(), 403);
    let res = c.post(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let retried: Value = res.json().await.unwrap();
    assert_eq!((retried["state"].as_str(), retried["step"].as_str()), (Some("GRANTED"), Some("LOCAL_DELAYED")));
    let done = wait_for("the retried request to succeed", Duration::from_secs(30), || async {
        get("dlq-1").await.filter(|v| v["state"] == "SUCCESS")
    })
    .await;
    assert_eq!(done["action"], "CREATED");
    let again = c.post(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(again.status(), 409, "a request no longer in error is not retried");
    assert_eq!(again.headers()["content-type"], "application/problem+json");

    // The other is deleted; deleting it again is 404, deleting a success is 409.
    let del = |id: &str| c.delete(r.url(&format!("/features/requests/{id}"))).bearer_auth(&admin).send();
    assert_eq!(del("dlq-2").await.unwrap().status(), 204);
    assert_eq!(del("dlq-2").await.unwrap().status(), 404);
    assert_eq!(del("dlq-1").await.unwrap().status(), 409);
}

const CLI: &str = env!("CARGO_BIN_EXE_granary");

/// Runs `granary` with `args`; returns its exit code and its stdout parsed as JSON.
fn granary_cli(args: &[&str]) -> (i32, Value) {
    let out = Command::new(CLI).args(args).arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("granary {args:?} printed no JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), json)
}

fn feature(id: &str, n: Value) -> Value {
    json!({"type": "Feature", "id": id, "entityType": "DATA", "model": "M", "geometry": {"type": "Point", "coordinates": [1.0, 2.0]}, "properties": {"n": n}})
}

#[tokio::test]
async fn the_cli_submits_a_directory_over_http_and_follows_it_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner::start(dir.path(), &[]);
    let c = client();
    define_model(&c, &r, dir.path(), "M", &model_m()).await;
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    let input = tempfile::tempdir().unwrap();
    let write = |name: &str, v: &str| std::fs::write(input.path().join(name), v).unwrap();
    write("a.geojson", &feature("product-cli-1", json!(1)).to_string());
    write(
        "b.json",
        &json!({"type": "FeatureCollection", "features": [feature("product-cli-2", json!(2)), feature(&"x".repeat(101), json!(3))]})
            .to_string(),
    );
    write("c.json", "{ not json");
    write("d.geojson", &feature("product-cli-3", json!("not an integer")).to_string());
    write("notes.txt", "ignored: not a .json or .geojson file");

    let dir_arg = input.path().to_str().unwrap();
    let (code, summary) = granary_cli(&[
        "submit",
        dir_arg,
        "--url",
        &r.base,
        "--token",
        &producer,
        "--session",
        "cli",
        "--batch",
        "2",
        "--follow",
        "--timeout-secs",
        "60",
    ]);
    assert_eq!(code, 1, "something was denied: {summary}");
    assert_eq!((summary["granted"].as_u64(), summary["denied"].as_u64()), (Some(3), Some(2)), "{summary}");
    let denied: Vec<&str> = summary["deniedEntries"].as_array().unwrap().iter().map(|d| d[0].as_str().unwrap()).collect();
    assert_eq!(denied, vec!["c.json", "b.json#1"], "{summary}");
    assert!(summary["deniedEntries"].to_string().contains("100"), "the providerId length is the reason: {summary}");
    let followed = &summary["followed"];
    assert_eq!(followed["states"], json!({"SUCCESS": 2, "DENIED": 1}), "{summary}");
    assert!(followed["failures"][0][2][0].as_str().unwrap().contains("properties.n"), "ingest's reason: {summary}");
    // The created features are there.
    let urn = "URN:FEATURE:DATA:granary:".to_owned() + &granary_domain::entity_uuid("product-cli-1").to_string() + ":V1";
    assert_eq!(c.get(r.url(&format!("/features/{urn}"))).bearer_auth(&producer).send().await.unwrap().status(), 200);

    // Without a token: a clear refusal, exit code 2.
    let out = Command::new(CLI).args(["submit", dir_arg, "--url", &r.base]).env_remove("GRANARY_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("granary-local token"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_cli_submits_ndjson_onto_the_queue_then_lists_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner::start(dir.path(), &[]);
    let c = client();
    define_model(&c, &r, dir.path(), "M", &model_m()).await;
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let input = tempfile::tempdir().unwrap();
    let ndjson = input.path().join("batch.ndjson");
    let lines = [
        feature("product-q-1", json!(1)).to_string(),
        feature("product-q-2", json!(2)).to_string(),
        "{ broken".to_owned(),
        String::new(),
        feature("product-q-3", json!("three")).to_string(),
    ];
    std::fs::write(&ndjson, lines.join("\n")).unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, summary) = granary_cli(&[
        "submit",
        ndjson.to_str().unwrap(),
        "--via",
        "queue",
        "--data-dir",
        data,
        "--priority",
        "high",
        "--follow",
        "--timeout-secs",
        "60",
    ]);
    assert_eq!(code, 1, "{summary}");
    assert_eq!((summary["granted"].as_u64(), summary["denied"].as_u64()), (Some(3), Some(1)), "{summary}");
    assert_eq!(summary["deniedEntries"][0][0], "batch.ndjson:3");
    assert_eq!(summary["followed"]["states"], json!({"SUCCESS": 2, "DENIED": 1}), "{summary}");

    // Operators list by state, over HTTP (admin) or from the tables.
    let (code, denied) = granary_cli(&["requests", "--state", "DENIED", "--url", &r.base, "--token", &admin]);
    assert_eq!(code, 0);
    assert_eq!(denied.as_array().unwrap().len(), 1, "{denied}");
    assert_eq!(denied[0]["providerId"], "product-q-3");
    let (_, succeeded) = granary_cli(&["requests", "--state", "SUCCESS", "--type", "CREATION", "--via", "queue", "--data-dir", data]);
    assert_eq!(succeeded.as_array().unwrap().len(), 2, "{succeeded}");

    // Deletions from an NDJSON file of URNs, over HTTP.
    let urns: Vec<String> = succeeded.as_array().unwrap().iter().map(|r| r["urn"].as_str().unwrap().to_owned()).collect();
    let deletions = input.path().join("deletions.ndjson");
    std::fs::write(&deletions, format!("{}\n{{\"urn\": \"{}\"}}\n", urns[0], urns[1])).unwrap();
    let (code, summary) =
        granary_cli(&["submit", deletions.to_str().unwrap(), "--kind", "deletion", "--url", &r.base, "--token", &admin, "--follow"]);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary["followed"]["states"], json!({"SUCCESS": 2}));
    for urn in &urns {
        assert_eq!(c.get(r.url(&format!("/features/{urn}"))).bearer_auth(&admin).send().await.unwrap().status(), 404, "{urn} deleted");
    }
}

#[tokio::test]
async fn one_worker_serves_every_high_request_before_any_low_one() {
    let dir = tempfile::tempdir().unwrap();
    // Queued before the runner starts: 30 LOW first, then 20 HIGH.
    let backend = open(dir.path());
    let def = model_m();
    let compiled = granary_domain::model::compile_model("M", &def).unwrap();
    granary_stores::models::ModelStore::new("features").put(&backend, &def, &compiled, "test").await.unwrap();
    let creation = |id: String| {
        OutgoingMessage::new(json!({"metadata": {"sessionOwner": "e2e", "session": "prio"}, "feature": feature(&id, json!(1))}).to_string())
            .attribute("regards.request.type", "CREATION")
    };
    for (queue, prefix, n) in [("feature-low", "low", 30), ("feature-high", "high", 20)] {
        let messages: Vec<_> = (0..n).map(|i| creation(format!("{prefix}-{i}"))).collect();
        for chunk in messages.chunks(10) {
            backend.queue.send_batch(queue, chunk.to_vec()).await.unwrap();
        }
    }
    let _r = Runner::start_with(dir.path(), &["--ingest-workers", "1"], &[]);
    let created = |prefix: &'static str, n: usize| {
        let backend = backend.clone();
        async move {
            let mut times = Vec::new();
            for i in 0..n {
                let key = Key::new(format!("F#{}", granary_domain::entity_uuid(&format!("{prefix}-{i}"))), "V001");
                times.push(backend.table.get("features", &key).await.unwrap()?.get_i64("createdAt")?);
            }
            Some(times)
        }
    };
    let lows = wait_for("every LOW creation", Duration::from_secs(30), || created("low", 30)).await;
    let highs = created("high", 20).await.expect("every HIGH creation");
    let (last_high, first_low) = (highs.iter().max().unwrap(), lows.iter().min().unwrap());
    assert!(last_high <= first_low, "a LOW request ran at {first_low} before the last HIGH one at {last_high}");
}

/// A source server on a free loopback port: `/ok` serves `body`, `/short` serves half of it (with a
/// Content-Length saying so), `/stall` half of it then nothing, anything else 404. Stops with the
/// test's runtime.
async fn source_server(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or_default().to_owned();
                let (status, payload) = if line.starts_with("GET /ok ") {
                    ("200 OK", body.as_slice())
                } else if line.starts_with("GET /short ") {
                    ("200 OK", &body[..body.len() / 2])
                } else if line.starts_with("GET /stall ") {
                    // Promises the whole body, sends half, then goes silent.
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body[..body.len() / 2]).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                } else {
                    ("404 Not Found", &b""[..])
                };
                let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", payload.len());
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(payload).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn files_are_stored_from_http_and_file_sources_and_bad_sources_end_in_storage_errors() {
    use md5::{Digest, Md5};
    let dir = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let checksum = hex::encode(Md5::digest(&content));
    std::fs::write(sources.path().join("local.bin"), &content).unwrap();
    let server = source_server(content.clone()).await;
    let roots = sources.path().to_str().unwrap().to_owned();
    let r = Runner::start(dir.path(), &[("GRANARY_STORAGE_FILE_ROOTS", &roots), ("GRANARY_STORAGE_SOURCE_TIMEOUT_SECS", "1")]);
    let c = client();
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;

    // The failing sources declare other bytes: a file already stored under its checksum is not copied again.
    let other = hex::encode(Md5::digest(b"other bytes"));
    let file = |url: String, checksum: &str| {
        json!([{"locations": [{"url": url}], "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream",
            "filename": "product.bin", "filesize": content.len(), "algorithm": "MD5", "checksum": checksum}}])
    };
    let local_url = url::Url::from_file_path(sources.path().join("local.bin")).unwrap().to_string();
    let mut body = creation_collection(&["from-http", "from-file", "missing", "short", "stalled"]);
    body["metadata"]["storages"] = json!([{"pluginBusinessId": "online", "storePath": "e2e"}]);
    let cases = [
        (format!("{server}/ok"), &checksum),
        (local_url, &checksum),
        (format!("{server}/missing"), &other),
        (format!("{server}/short"), &other),
        (format!("{server}/stall"), &other),
    ];
    for (i, (url, sum)) in cases.into_iter().enumerate() {
        body["features"][i]["files"] = file(url, sum);
    }
    let res = c.post(r.url("/features")).bearer_auth(&producer).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let info: Value = res.json().await.unwrap();
    let ids: Vec<String> = info["granted"].as_array().unwrap().iter().map(|g| g["requestId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 5, "{info}");
    let mut finals = Vec::new();
    for id in &ids {
        let url = r.url(&format!("/features/requests/{id}"));
        finals.push(
            wait_for("the request to finish", Duration::from_secs(30), || async {
                let v: Value = c.get(&url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
                (v["state"] == "SUCCESS" || v["state"] == "ERROR").then_some(v)
            })
            .await,
        );
    }
    let steps: Vec<(&str, &str)> = finals.iter().map(|v| (v["state"].as_str().unwrap(), v["step"].as_str().unwrap())).collect();
    let error = ("ERROR", "REMOTE_STORAGE_ERROR");
    assert_eq!(steps, vec![("SUCCESS", "DONE"), ("SUCCESS", "DONE"), error, error, error]);
    assert!(finals[4]["errors"][0].as_str().unwrap().contains("reading the source failed"), "{}", finals[4]);
    assert!(finals[2]["errors"][0].as_str().unwrap().contains("404"), "{}", finals[2]);
    assert!(finals[3]["errors"][0].as_str().unwrap().contains("ended after 100000 of the declared 200000 bytes"), "{}", finals[3]);

    // The stored file is one object, named by its checksum, listed among the feature's locations.
    let feature: Value = c
        .get(r.url(&format!("/features/{}", finals[0]["urn"].as_str().unwrap())))
        .bearer_auth(&producer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = format!("s3://storage/online/e2e/{checksum}");
    let locations = feature["feature"]["files"][0]["locations"].as_array().unwrap();
    assert!(locations.iter().any(|l| l["storage"] == "online" && l["url"] == stored.as_str()), "{locations:?}");
    let backend = open(dir.path());
    let meta = backend.blobs.head("storage", &format!("online/e2e/{checksum}")).await.unwrap().expect("the stored object");
    assert_eq!((meta.size, meta.etag), (content.len() as u64, checksum.clone()));

    // An admin defines a location; producers store into it at once.
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let location = json!({"bucket": "archive", "prefix": "mission-b", "class": "ONLINE"});
    let put = |t: &str, body: &Value| c.put(r.url("/storage-locations/mission-b")).bearer_auth(t).json(body).send();
    assert_eq!(put(&producer, &location).await.unwrap().status(), 403);
    let bad = put(&admin, &json!({"bucket": "Not_A_Bucket", "class": "TAPE"})).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("TAPE"));
    assert_eq!(put(&admin, &location).await.unwrap().status(), 201);
    assert_eq!(put(&admin, &location).await.unwrap().status(), 200, "replaced");
    let listed: Value = c.get(r.url("/storage-locations")).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["locations"]["mission-b"], location);
    assert_eq!(listed["locations"]["online"]["class"], "ONLINE", "the configured ones too");
    let mut body = creation_collection(&["into-mission-b"]);
    body["metadata"]["storages"] = json!([{"pluginBusinessId": "mission-b"}]);
    body["features"][0]["files"] = file(format!("{server}/ok"), &checksum);
    submit_and_wait(&c, &r, &producer, reqwest::Method::POST, &body).await;
    assert!(backend.blobs.head("archive", &format!("mission-b/{checksum}")).await.unwrap().is_some());
}

#[tokio::test]
async fn in_the_cloud_configuration_sources_on_internal_addresses_are_refused_before_any_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    // A listener that only counts the connections it is offered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    // The template's setting: no internal network reachable, only https to listed hosts.
    let r = Runner::start(
        dir.path(),
        &[("GRANARY_OUTBOUND_INTERNAL", ""), ("GRANARY_OUTBOUND_SCHEMES", "http,https"), ("GRANARY_OUTBOUND_HOSTS", "*")],
    );
    let c = client();
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;
    // An address in the URL is refused by ingest (DENIED); a name only once resolved, by the storage
    // worker (the request ends in REMOTE_STORAGE_ERROR).
    let denied = ("DENIED", "");
    let store_error = ("ERROR", "REMOTE_STORAGE_ERROR");
    let cases = [
        (format!("http://127.0.0.1:{port}/f"), "loopback", denied),
        (format!("http://localhost:{port}/f"), "loopback", store_error),
        (format!("http://2130706433:{port}/f"), "loopback", denied),
        (format!("http://[::ffff:127.0.0.1]:{port}/f"), "loopback", denied),
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(), "link-local", denied),
        ("http://10.0.0.1/f".to_owned(), "private", denied),
    ];
    let ids: Vec<String> = (0..cases.len()).map(|i| format!("internal-{i}")).collect();
    let mut body = creation_collection(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    body["metadata"]["storages"] = json!([{"pluginBusinessId": "online"}]);
    for (i, (url, _, _)) in cases.iter().enumerate() {
        body["features"][i]["files"] = json!([{"locations": [{"url": url}], "attributes": {"dataType": "RAWDATA",
            "mimeType": "application/octet-stream", "filename": "f.bin", "filesize": 10, "algorithm": "MD5",
            "checksum": "0123456789abcdef0123456789abcdef"}}]);
    }
    let res = c.post(r.url("/features")).bearer_auth(&producer).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let info: Value = res.json().await.unwrap();
    let requests: Vec<String> = info["granted"].as_array().unwrap().iter().map(|g| g["requestId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(requests.len(), cases.len(), "{info}");
    for (id, (url, why, (state, step))) in requests.iter().zip(&cases) {
        let request_url = r.url(&format!("/features/requests/{id}"));
        let done = wait_for("the request to finish", Duration::from_secs(30), || async {
            let v: Value = c.get(&request_url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
            ["SUCCESS", "ERROR", "DENIED"].contains(&v["state"].as_str()?).then_some(v)
        })
        .await;
        assert_eq!(done["state"].as_str(), Some(*state), "{url}: {done}");
        if !step.is_empty() {
            assert_eq!(done["step"].as_str(), Some(*step), "{url}: {done}");
        }
        let error = done["errors"][0].as_str().unwrap();
        assert!(error.contains(why), "{url}: {error}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "no source on an internal address was connected to");
}

#[tokio::test]
async fn a_storage_worker_killed_mid_copy_copies_again_after_a_restart_into_one_object() {
    use md5::{Digest, Md5};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // The storage job comes back 2 s after the runner holding it dies.
    let template = template_with_visibility(scratch.path(), "StorageJobs", 2);
    let template = template.to_str().unwrap().to_owned();
    let content: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    let checksum = hex::encode(Md5::digest(&content));
    // A slow source: 64 KiB every 10 ms, counting what it sent.
    let sent = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let (body, counter) = (content.clone(), sent.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (body, counter) = (body.clone(), counter.clone());
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = socket.write_all(head.as_bytes()).await;
                for chunk in body.chunks(64 * 1024) {
                    if socket.write_all(chunk).await.is_err() {
                        return;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
    });
    let env = [("GRANARY_LOCAL_TEMPLATE", template.as_str())];
    let r = Runner::start(dir.path(), &env);
    let c = client();
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;
    let mut body = creation_collection(&["killed-mid-copy"]);
    body["metadata"]["storages"] = json!([{"pluginBusinessId": "online"}]);
    body["features"][0]["files"] = json!([{"locations": [{"url": format!("{server}/slow")}], "attributes": {"dataType": "RAWDATA",
        "mimeType": "application/octet-stream", "filename": "slow.bin", "filesize": content.len(), "algorithm": "MD5", "checksum": checksum}}]);
    let res = c.post(r.url("/features")).bearer_auth(&producer).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let info: Value = res.json().await.unwrap();
    let request_id = info["granted"][0]["requestId"].as_str().unwrap().to_owned();
    wait_for("the copy to be under way", Duration::from_secs(20), || async { (sent.load(Ordering::SeqCst) > 1024 * 1024).then_some(()) })
        .await;
    r.kill9();

    let r = Runner::start(dir.path(), &env);
    let url = r.url(&format!("/features/requests/{request_id}"));
    let done: Value = wait_for("the request to finish after the restart", Duration::from_secs(60), || async {
        let v: Value = c.get(&url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
        (v["state"] == "SUCCESS" || v["state"] == "ERROR").then_some(v)
    })
    .await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert!(sent.load(Ordering::SeqCst) > content.len() as u64, "the file was sent again from the start");
    let backend = open(dir.path());
    let meta = backend.blobs.head("storage", &format!("online/{checksum}")).await.unwrap().expect("one object");
    assert_eq!((meta.size, meta.etag), (content.len() as u64, checksum.clone()));
    let object = granary_domain::storage::StoredObject { storage: "online".into(), checksum };
    assert_eq!(granary_stores::owners::FileOwners::new("features").owners(&backend, &object).await.unwrap(), 1, "claimed once");
}

#[tokio::test]
async fn recipients_defined_over_http_get_each_notification_once_and_acknowledge() {
    use std::sync::atomic::Ordering;
    const SECRET: &str = "e2e webhook secret, long enough";
    // A webhook on 127.0.0.1 that fails its first two calls, then accepts what is correctly signed.
    let (hook_url, accepted, calls) = granary_testkit::webhook(SECRET, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let template_path = with_mirror_queue(scratch.path().join("template.yaml"));
    let template_path = template_path.to_str().unwrap().to_owned();
    let env =
        [("GRANARY_LOCAL_TEMPLATE", template_path.as_str()), ("GRANARY_NOTIFICATION_RETRY_SECS", "1"), ("GRANARY_MODEL_CACHE_SECS", "0")];
    let r = Runner::start(dir.path(), &env);
    let c = client();
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let producer = token(dir.path(), "ann@example.org", &["--groups", "producer"]);
    define_model(&c, &r, dir.path(), "M", &model_m()).await;

    let put = |label: &str, t: &str, body: Value| c.put(r.url(&format!("/recipients/{label}"))).bearer_auth(t).json(&body).send();
    let mirror = json!({"target": {"type": "queue", "queue": "mirror"}, "ackRequired": true});
    assert_eq!(put("mirror", &producer, mirror.clone()).await.unwrap().status(), 403);
    let bad = put("hook", &admin, json!({"target": {"type": "webhook", "url": "http://example.org/x"}, "blocking": true})).await.unwrap();
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 3, "https, secret, blocking without ack: {problem}");
    assert_eq!(put("mirror", &admin, mirror).await.unwrap().status(), 201);
    let hook = json!({"target": {"type": "webhook", "url": hook_url}, "secret": SECRET, "filter": {"actions": ["CREATED"]}});
    let created: Value = put("hook", &admin, hook).await.unwrap().json().await.unwrap();
    assert!(created["recipients"]["hook"].get("secret").is_none(), "the secret is never shown back");

    let record = create_and_wait(&c, &r, &producer, &["disseminated"]).await;
    let urn = record["urn"].as_str().unwrap().to_owned();
    let id = format!("{urn}:CREATED:{}", record["requestId"].as_str().unwrap());
    let url = r.url(&format!("/features/{urn}"));
    // Each delivery is recorded before it is sent: the webhook has it once it accepted it.
    let feature: Value = wait_for("both recipients to have it", Duration::from_secs(30), || async {
        let v: Value = c.get(&url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
        (v["disseminationInfo"].as_array()?.len() == 2 && !accepted.lock().unwrap().is_empty()).then_some(v)
    })
    .await;
    let info = feature["disseminationInfo"].as_array().unwrap();
    let by = |label: &str| info.iter().find(|i| i["label"] == label).unwrap().clone();
    assert!(by("mirror")["ackDate"].is_null(), "the mirror acknowledges itself");
    assert_eq!(by("hook")["ackDate"], by("hook")["disseminationDate"], "no acknowledgement needed");
    assert_eq!(*accepted.lock().unwrap(), vec![id.clone()], "the webhook got it once, after two failures");
    assert!(calls.load(Ordering::SeqCst) >= 3);
    let resources = granary_local::resources::load(Some(Path::new(&template_path))).unwrap();
    let backend = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap().backend();
    let got = backend.queue.receive("mirror", 10, None, Duration::from_millis(200)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attributes["granary.event.id"], id);

    // The mirror acknowledges on the ack queue.
    let ack = OutgoingMessage::new(json!({"urn": urn, "recipientLabel": "mirror"}).to_string());
    backend.queue.send_batch("feature-ack", vec![ack]).await.unwrap();
    wait_for("the acknowledgement", Duration::from_secs(20), || async {
        let v: Value = c.get(&url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
        v["disseminationInfo"].as_array()?.iter().any(|i| i["label"] == "mirror" && i["ackDate"].is_number()).then_some(())
    })
    .await;
    // The session's counters per recipient, over HTTP: each done once, the mirror by its acknowledgement.
    let counters = || async {
        let v: Value = c.get(r.url("/features/sessions/e2e/s1")).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
        let n = |name: &str| v["counters"][name].as_i64().unwrap_or(-1);
        (n("mirror.pending"), n("mirror.done"), n("hook.done"))
    };
    assert_eq!(counters().await, (0, 1, 1));

    // A blocking mirror holds the next creation (GRANTED, WAITING_BLOCKING_DISSEMINATION) until it
    // acknowledges; then the request is SUCCESS.
    let blocking = json!({"target": {"type": "queue", "queue": "mirror"}, "ackRequired": true, "blocking": true});
    assert_eq!(put("mirror", &admin, blocking).await.unwrap().status(), 200);
    let res = c.post(r.url("/features")).bearer_auth(&producer).json(&creation_collection(&["held"])).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let info: Value = res.json().await.unwrap();
    let held_url = r.url(&format!("/features/requests/{}", info["granted"][0]["requestId"].as_str().unwrap()));
    let held: Value = wait_for("the creation to wait for the mirror", Duration::from_secs(30), || async {
        let v: Value = c.get(&held_url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
        (v["step"] == "WAITING_BLOCKING_DISSEMINATION").then_some(v)
    })
    .await;
    assert_eq!((held["state"].as_str(), held["blockedBy"].clone()), (Some("GRANTED"), json!(["mirror"])));
    let held_urn = held["urn"].as_str().unwrap().to_owned();
    wait_for("the mirror to get the held feature", Duration::from_secs(30), || async {
        let got = backend.queue.receive("mirror", 10, None, Duration::from_millis(200)).await.unwrap();
        got.iter().any(|m| m.body.contains(&held_urn)).then_some(())
    })
    .await;
    assert_eq!(counters().await, (1, 1, 2), "the mirror's acknowledgement is pending; the hook is done at once");
    let still: Value = c.get(&held_url).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!(still["state"], "GRANTED", "held while the mirror has not acknowledged");
    let ack = OutgoingMessage::new(json!({"urn": held_urn, "recipientLabel": "mirror"}).to_string());
    backend.queue.send_batch("feature-ack", vec![ack]).await.unwrap();
    wait_for("the held request to succeed", Duration::from_secs(30), || async {
        let v: Value = c.get(&held_url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
        (v["state"] == "SUCCESS").then_some(())
    })
    .await;
    assert_eq!(counters().await, (0, 2, 2));
    // A request the mirror holds is let go when an admin makes the mirror non-blocking.
    let res = c.post(r.url("/features")).bearer_auth(&producer).json(&creation_collection(&["held-2"])).send().await.unwrap();
    let info: Value = res.json().await.unwrap();
    let held_url = r.url(&format!("/features/requests/{}", info["granted"][0]["requestId"].as_str().unwrap()));
    wait_for("the second creation to wait for the mirror", Duration::from_secs(30), || async {
        let v: Value = c.get(&held_url).bearer_auth(&producer).send().await.ok()?.json().await.ok()?;
        (v["step"] == "WAITING_BLOCKING_DISSEMINATION").then_some(())
    })
    .await;
    let unblocked = json!({"target": {"type": "queue", "queue": "mirror"}, "ackRequired": true});
    assert_eq!(put("mirror", &admin, unblocked).await.unwrap().status(), 200);
    let done: Value = c.get(&held_url).bearer_auth(&producer).send().await.unwrap().json().await.unwrap();
    assert_eq!((done["state"].as_str(), done["step"].as_str()), (Some("SUCCESS"), Some("DONE")), "released by the change");
    // Switched off: a new feature reaches no one.
    let off = c.put(r.url("/notification-settings")).bearer_auth(&admin).json(&json!({"active": false})).send().await.unwrap();
    assert_eq!(off.status(), 200);
    let quiet = create_and_wait(&c, &r, &producer, &["not-disseminated"]).await;
    let listed: Value = c.get(r.url("/recipients")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!((listed["active"].as_bool(), listed["recipients"].as_object().unwrap().len()), (Some(false), 2));
    let quiet: Value = c
        .get(r.url(&format!("/features/{}", quiet["urn"].as_str().unwrap())))
        .bearer_auth(&producer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(quiet["disseminationInfo"].as_array().unwrap().is_empty());
    assert_eq!(c.delete(r.url("/recipients/hook")).bearer_auth(&admin).send().await.unwrap().status(), 204);
    assert_eq!(c.delete(r.url("/recipients/hook")).bearer_auth(&admin).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn users_search_fill_a_basket_and_order_it_over_http_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner::start(dir.path(), &[]);
    let c = client();
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let user = token(dir.path(), "ann@example.org", &["--groups", "s2"]);
    define_order_models(&c, &r, &admin).await;
    let stored = |p: usize, f: usize| {
        json!({"locations": [{"storage": "nearline", "url": format!("s3://storage/nearline/{p}/{f}")}],
        "attributes": {"dataType": "RAWDATA", "mimeType": "application/zip", "filename": format!("{p}-{f}.zip"), "filesize": 1000, "algorithm": "MD5", "checksum": format!("{p:016x}{f:016x}")}})
    };
    let mut features = vec![json!({"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
                                   "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}})];
    features.extend((0..12).map(|p| {
        json!({"type": "Feature", "id": format!("tile-{p:02}"), "entityType": "DATA", "model": "P", "tags": ["S2"],
        "geometry": {"type": "Point", "coordinates": [p, 43]}, "properties": {"acquisitionDate": format!("2026-11-{:02}T10:00:00Z", p + 1)},
        "files": [stored(p, 0), stored(p, 1)]})
    }));
    let body = json!({"metadata": {"sessionOwner": "e2e", "session": "orders"}, "features": features});
    let res = c.post(r.url("/features")).bearer_auth(&admin).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    // Every product is in the catalog once ingest is through.
    let page = wait_for("the catalog to hold the 12 products", Duration::from_secs(30), || async {
        let v: Value =
            c.get(r.url("/datasets/S2/products")).query(&[("size", "100")]).bearer_auth(&user).send().await.ok()?.json().await.ok()?;
        (v["content"].as_array()?.len() == 12).then_some(v)
    })
    .await;
    assert_eq!(page["content"][0]["files"][0]["online"], false);
    assert_eq!(c.get(r.url("/public/datasets/S2/products")).send().await.unwrap().status(), 404, "not a public dataset");
    assert_eq!(c.get(r.url("/order/basket")).send().await.unwrap().status(), 401);

    let search = json!({"datasetUrn": "S2", "searchParameters": {"from": "2026-11-05T00:00:00Z", "to": "2026-11-08T23:00:00Z"}});
    let basket: Value =
        c.post(r.url("/order/basket/selection")).bearer_auth(&user).json(&search).send().await.unwrap().json().await.unwrap();
    assert_eq!(basket["datasetSelections"][0]["objectsCount"], 4, "{basket}");
    let upload = "--e2e\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ids.txt\"\r\nContent-Type: text/plain\r\n\r\ntile-00\ntile-11\nghost\n\r\n--e2e--\r\n";
    let basket: Value = c
        .post(r.url("/order/basket/selection/upload"))
        .bearer_auth(&user)
        .header("content-type", "multipart/form-data; boundary=e2e")
        .body(upload)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(basket["unmatchedIds"], json!(["ghost"]));
    assert_eq!(basket["datasetSelections"][0]["filesCount"], 12, "six products, two files each: {basket}");

    let res = c.post(r.url("/user/orders")).bearer_auth(&user).json(&json!({"label": "e2e order"})).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let order: Value = res.json().await.unwrap();
    assert_eq!(order["status"], "PENDING");
    let url = r.url(&format!("/user/orders/{}", order["id"].as_str().unwrap()));
    // The products name nearline objects that were never stored: once dispatched, every file fails
    // alone ("missing"), and the order, with nothing made available, ends FAILED.
    let ended = wait_for("the order to end", Duration::from_secs(30), || async {
        let v: Value = c.get(&url).bearer_auth(&user).send().await.ok()?.json().await.ok()?;
        (v["status"] != "PENDING" && v["status"] != "RUNNING").then_some(v)
    })
    .await;
    assert_eq!(ended["status"], "FAILED", "{ended}");
    assert_eq!((ended["filesCount"].as_u64(), ended["filesInErrorCount"].as_u64()), (Some(12), Some(12)));
    assert_eq!(ended["suborders"].as_array().unwrap().len(), 1);
    let empty: Value = c.get(r.url("/order/basket")).bearer_auth(&user).send().await.unwrap().json().await.unwrap();
    assert_eq!(empty["datasetSelections"], json!([]));
    let mine: Value = c.get(r.url("/user/orders")).bearer_auth(&user).send().await.unwrap().json().await.unwrap();
    assert_eq!(mine["content"][0]["label"], "e2e order");
}

/// Installs Debian's aria2 when `aria2c` is missing (as the tests install moto): `.ci/run` runs as root.
fn ensure_aria2c() {
    ensure_debian_package("aria2", || Command::new("aria2c").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()));
}

/// Installs Debian's `package` unless `present` says it is there (`.ci/run` runs as root).
fn ensure_debian_package(package: &str, present: impl Fn() -> bool) {
    if present() {
        return;
    }
    let install =
        || Command::new("apt-get").args(["install", "-y", "-q", package]).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::null()).status();
        install();
    }
    assert!(present(), "Debian's {package} is needed: apt-get install {package}");
}

/// Runs `aria2c -M` on `metalink` into `out`: its exit status (0 when every file came and matched its hash).
fn aria2c(metalink: &Path, out: &Path) -> std::process::ExitStatus {
    ensure_aria2c();
    Command::new("aria2c")
        .arg("-M")
        .arg(metalink)
        .arg("-d")
        .arg(out)
        .args(["--allow-overwrite=true", "--auto-file-renaming=false", "--console-log-level=warn", "--summary-interval=0"])
        .args(["--file-allocation=none", "--check-integrity=true", "--max-tries=2", "--connect-timeout=5", "--timeout=20"])
        .status()
        .expect("aria2c (Debian's aria2) is installed")
}

#[tokio::test]
async fn orders_are_dispatched_within_limits_and_fetched_with_aria2c_from_the_metalink() {
    use md5::{Digest, Md5};
    let dir = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let roots = sources.path().to_str().unwrap().to_owned();
    // Files of 300 kB in suborders of at most 1 MiB (three each); Y = 2; Ann may have 8 files a day.
    let r = Runner::start(
        dir.path(),
        &[
            ("GRANARY_STORAGE_FILE_ROOTS", &roots),
            ("GRANARY_ORDER_SUBORDER_MAX_MIB", "1"),
            ("GRANARY_ORDER_USER_MAX", "2"),
            ("GRANARY_LOCAL_RESTORE_DELAY_SECS", "1"),
        ],
    );
    let c = client();
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let ann = token(dir.path(), "ann@example.org", &["--groups", "s2"]);
    let bob = token(dir.path(), "bob@example.org", &["--groups", "s2"]);
    define_order_models(&c, &r, &admin).await;
    let res = c
        .put(r.url("/quotas/ann@example.org"))
        .bearer_auth(&admin)
        .json(&json!({"maxFiles": 8, "maxBytes": -1, "periodHours": 24}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A storage service holding one file, served (for the download) by a plain HTTP server.
    let tape_content: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let tape_sum = hex::encode(Md5::digest(&tape_content));
    let tape_server = source_server(tape_content).await;

    let product = |id: &str, seed: u32| {
        let content: Vec<u8> = (0..300_000u32).map(|i| ((i * 7 + seed) % 253) as u8).collect();
        let path = sources.path().join(format!("{id}.bin"));
        std::fs::write(&path, &content).unwrap();
        let url = url::Url::from_file_path(&path).unwrap().to_string();
        json!({"type": "Feature", "id": id, "entityType": "DATA", "model": "P", "tags": ["S2"], "geometry": null, "properties": {},
               "files": [{"locations": [{"url": url}], "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream",
                          "filename": format!("{id}.bin"), "filesize": content.len(), "algorithm": "MD5", "checksum": hex::encode(Md5::digest(&content))}}]})
    };
    let dataset = json!({"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
                         "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}});
    let tape = json!({"type": "Feature", "id": "tape-0", "entityType": "DATA", "model": "P", "tags": ["S2"], "geometry": null, "properties": {},
                      "files": [{"locations": [{"storage": "tape", "url": format!("{tape_server}/ok")}],
                                 "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream", "filename": "tape-0.bin",
                                                "filesize": 300_000, "algorithm": "MD5", "checksum": tape_sum}}]});
    // Ann's six online products and two nearline ones (copied in by the storage worker), the
    // service's one, and Bob's one.
    let online: Vec<Value> = (0..6).map(|i| product(&format!("on-{i}"), i)).chain([product("bob-0", 99)]).collect();
    let nearline: Vec<Value> = (0..2).map(|i| product(&format!("cold-{i}"), 50 + i)).collect();
    for (features, storage) in [(vec![dataset, tape], None), (online, Some("online")), (nearline, Some("nearline"))] {
        let mut body = json!({"metadata": {"sessionOwner": "e2e", "session": "orders"}, "features": features});
        if let Some(s) = storage {
            body["metadata"]["storages"] = json!([{"pluginBusinessId": s}]);
        }
        let res = c.post(r.url("/features")).bearer_auth(&admin).json(&body).send().await.unwrap();
        let info: Value = res.json().await.unwrap();
        for g in info["granted"].as_array().unwrap() {
            let url = r.url(&format!("/features/requests/{}", g["requestId"].as_str().unwrap()));
            let done = wait_for("the product to be stored", Duration::from_secs(30), || async {
                let v: Value = c.get(&url).bearer_auth(&admin).send().await.ok()?.json().await.ok()?;
                (v["state"] == "SUCCESS" || v["state"] == "ERROR").then_some(v)
            })
            .await;
            assert_eq!(done["state"], "SUCCESS", "{done}");
        }
    }

    let order = |token: String, ids: Vec<&'static str>| {
        let c = c.clone();
        let (select, create) = (r.url("/order/basket/selection"), r.url("/user/orders"));
        async move {
            let res = c.post(&select).bearer_auth(&token).json(&json!({"entityIdsToInclude": ids})).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let res = c.post(&create).bearer_auth(&token).json(&json!({})).send().await.unwrap();
            assert_eq!(res.status(), 201);
            res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        }
    };
    let ann_ids = vec!["tape-0", "cold-0", "cold-1", "on-0", "on-1", "on-2", "on-3", "on-4", "on-5"];
    let ann_order = order(ann.clone(), ann_ids).await;
    let bob_order = order(bob.clone(), vec!["bob-0"]).await;
    let get = |token: String, id: String| {
        let c = c.clone();
        let url = r.url(&format!("/user/orders/{id}"));
        async move { c.get(&url).bearer_auth(&token).send().await.ok()?.json::<Value>().await.ok() }
    };

    // The storage service, played by this task: each FilesRestorationRequestEvent is answered with
    // FileReferenceEvent AVAILABLE for each checksum, on the storage-ready queue.
    let backend = open(dir.path());
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let service = tokio::spawn({
        let (backend, asked) = (backend.clone(), asked.clone());
        async move {
            loop {
                for m in backend.queue.receive("files-restoration", 10, None, Duration::from_millis(100)).await.unwrap_or_default() {
                    let event: Value = serde_json::from_str(&m.body).unwrap();
                    for sum in event["checksums"].as_array().unwrap() {
                        let answer =
                            json!({"type": "AVAILABLE", "checksum": sum, "groupIds": [event["groupId"]], "location": {"storage": "tape"}});
                        backend.queue.send_batch("storage-ready", vec![OutgoingMessage::new(answer.to_string())]).await.unwrap();
                        asked.lock().unwrap().push(sum.as_str().unwrap().to_owned());
                    }
                    backend.queue.delete_batch("files-restoration", vec![m.receipt_handle.clone()]).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // Bob's small order is done while Ann's third suborder waits for her downloads (Y = 2).
    let bob_done = wait_for("Bob's order to be done", Duration::from_secs(30), || async {
        let v = get(bob.clone(), bob_order.clone()).await?;
        (v["status"] == "DONE").then_some(v)
    })
    .await;
    assert_eq!(bob_done["availableFilesCount"], 1);
    let internal_states = |v: &Value| -> Vec<String> {
        v["suborders"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "INTERNAL")
            .map(|s| s["state"].as_str().unwrap().to_owned())
            .collect()
    };
    let waiting = wait_for("Ann's first two suborders to be done", Duration::from_secs(30), || async {
        let v = get(ann.clone(), ann_order.clone()).await?;
        let s = internal_states(&v);
        (s.iter().filter(|s| *s == "DONE").count() == 2).then_some(v)
    })
    .await;
    assert_eq!(internal_states(&waiting).iter().filter(|s| *s == "WAITING").count(), 1, "{waiting}");
    assert_eq!(waiting["status"], "RUNNING");

    // aria2c fetches the metalink's files and checks each against its MD5; the downloads free Ann's
    // slots and her last suborder runs; a second metalink fetches the rest.
    let fetch = |round: usize| {
        let c = c.clone();
        let (ann, url) = (ann.clone(), r.url(&format!("/user/orders/{ann_order}/metalink/download")));
        let work = dir.path().join(format!("round-{round}"));
        async move {
            let res = c.get(&url).bearer_auth(&ann).send().await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-type"], "application/metalink4+xml");
            std::fs::create_dir_all(&work).unwrap();
            let metalink = work.join("order.metalink");
            std::fs::write(&metalink, res.bytes().await.unwrap()).unwrap();
            let out = work.join("files");
            let status = tokio::task::spawn_blocking({
                let (metalink, out) = (metalink.clone(), out.clone());
                move || aria2c(&metalink, &out)
            })
            .await
            .unwrap();
            assert!(status.success(), "aria2c failed: {status}");
            walk(&out)
        }
    };
    let first = fetch(1).await;
    assert_eq!(first.len(), 6, "the two done suborders' files: {first:?}");
    let ended = wait_for("Ann's order to end", Duration::from_secs(30), || async {
        let v = get(ann.clone(), ann_order.clone()).await?;
        (v["status"] != "RUNNING").then_some(v)
    })
    .await;
    // Eight files within her quota, the ninth past it.
    assert_eq!(ended["status"], "DONE_WITH_WARNING", "{ended}");
    assert_eq!((ended["filesInErrorCount"].as_u64(), ended["availableFilesCount"].as_u64()), (Some(1), Some(2)));
    // The zip holds the two files available now, streamed; its NOTICE names the one past the quota.
    let res = c.get(r.url(&format!("/user/orders/{ann_order}/download"))).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/zip");
    let bytes = res.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).expect("a zip");
    let mut names: Vec<String> = (0..zip.len()).map(|i| zip.by_index(i).unwrap().name().to_owned()).collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    let mut notice = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("NOTICE.txt").unwrap(), &mut notice).unwrap();
    assert!(notice.contains("quota exceeded"), "{notice}");
    for name in names.iter().filter(|n| *n != "NOTICE.txt") {
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(name).unwrap(), &mut content).unwrap();
        let product = name.split('/').next().unwrap();
        let source = std::fs::read(sources.path().join(format!("{product}.bin"))).unwrap();
        assert_eq!(content, source, "{name} as stored");
    }
    let after: Value = c.get(r.url(&format!("/user/orders/{ann_order}"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    assert_eq!(after["availableFilesCount"], 0, "the zip's files are downloaded");
    let none = c.get(r.url(&format!("/user/orders/{ann_order}/download"))).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(none.status(), 204);
    assert_eq!(c.get(r.url(&format!("/user/orders/{ann_order}/download"))).bearer_auth(&bob).send().await.unwrap().status(), 404);
    assert_eq!(c.get(r.url(&format!("/user/orders/{ann_order}/download"))).send().await.unwrap().status(), 401);
    let second = fetch(2).await;
    assert_eq!(second.len(), 8, "every available file, downloaded ones again: {second:?}");
    assert!(first.iter().all(|f| second.contains(f)), "{first:?} {second:?}");
    // The ninth file is the one past the quota; the service was asked for its file unless it was that one.
    let all: Vec<String> =
        ["tape-0", "cold-0", "cold-1", "on-0", "on-1", "on-2", "on-3", "on-4", "on-5"].iter().map(|p| format!("{p}/{p}.bin")).collect();
    let missing: Vec<&String> = all.iter().filter(|f| !second.contains(f)).collect();
    assert_eq!(missing.len(), 1, "{second:?}");
    service.abort();
    let asked = asked.lock().unwrap().clone();
    if missing[0] == "tape-0/tape-0.bin" {
        assert!(asked.is_empty());
    } else {
        assert_eq!(asked, vec![tape_sum.clone()], "the service was asked for its file once");
    }
    let finished = wait_for("every suborder finished", Duration::from_secs(30), || async {
        let v = get(ann.clone(), ann_order.clone()).await?;
        internal_states(&v).iter().all(|s| s == "FINISHED").then_some(v)
    })
    .await;
    assert_eq!(finished["availableFilesCount"], 0);
    let failed: Value =
        c.get(r.url(&format!("/orders/{ann_order}/files/available"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    assert_eq!(failed["content"].as_array().unwrap().len(), 8);
}

/// Every file under `dir`, as `/`-separated paths relative to it, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_none_or(|e| e != "aria2") {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}
