//! Throttling and transient errors from AWS. granary-local runs on the AWS backend against moto, through
//! a proxy that answers a share of Granary's calls as a busy AWS would: the service's throttling error
//! (DynamoDB's ProvisionedThroughputExceededException, SQS's RequestThrottled, S3's SlowDown), a 500, or
//! a connection reset, either before the call reaches moto or after it did (the call made, its answer
//! lost). An outage of 10 s, starting at Granary's first transactional write (so that it meets handlers
//! at work, on a loaded machine as on an idle one), fails every call, so that retries run out and the
//! SDK's retry quota empties. The SDK retries with backoff and jitter; what still fails is reported as a
//! batch item failure and comes back. Afterwards every request has succeeded, no feature has a second
//! version, every file is stored once, the order is done and downloaded, the recipient was told of
//! every creation, and every dead-letter queue is empty.
//!
//! `GRANARY_THROTTLE_PRODUCTS` (default 40) and `GRANARY_THROTTLE_PER_MILLE` (default 100) set the size
//! and the fault rate; `GRANARY_FAULT_SEED` replays a run. `.ci/faults` runs it at full size.

use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// What the proxy does instead of forwarding a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Throttle,
    ServerError,
    /// The connection is closed before the call reaches moto.
    ResetBefore,
    /// The call reaches moto, and the connection is closed before its answer is sent back.
    ResetAfter,
}

const FAULTS: [Fault; 4] = [Fault::Throttle, Fault::ServerError, Fault::ResetBefore, Fault::ResetAfter];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    DynamoDb,
    Sqs,
    S3,
}

impl Service {
    /// The service a call is signed for (its SigV4 credential scope); `None` for presigned URLs,
    /// which are the users' downloads, not Granary's calls.
    fn of(req: &hyper::Request<Incoming>) -> Option<Service> {
        let auth = req.headers().get("authorization")?.to_str().ok()?;
        [("/dynamodb/", Service::DynamoDb), ("/sqs/", Service::Sqs), ("/s3/", Service::S3)]
            .into_iter()
            .find_map(|(scope, s)| auth.contains(scope).then_some(s))
    }

    /// The answer AWS gives to `fault`, in the service's protocol.
    fn answer(self, fault: Fault) -> hyper::Response<Full<Bytes>> {
        let json = |status: u16, kind: &str, query_code: Option<&str>| {
            let mut res = hyper::Response::builder().status(status).header("content-type", "application/x-amz-json-1.0");
            if let Some(code) = query_code {
                res = res.header("x-amzn-query-error", format!("{code};Sender"));
            }
            res.body(Full::new(Bytes::from(json!({"__type": kind, "message": "injected by the test proxy"}).to_string()))).unwrap()
        };
        let xml = |status: u16, code: &str| {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>injected</RequestId></Error>"
            );
            hyper::Response::builder().status(status).header("content-type", "application/xml").body(Full::new(Bytes::from(body))).unwrap()
        };
        match (self, fault) {
            (Service::DynamoDb, Fault::Throttle) => {
                json(400, "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException", None)
            }
            (Service::DynamoDb, _) => json(500, "com.amazonaws.dynamodb.v20120810#InternalServerError", None),
            (Service::Sqs, Fault::Throttle) => json(400, "com.amazonaws.sqs#RequestThrottled", Some("RequestThrottled")),
            (Service::Sqs, _) => json(500, "com.amazonaws.sqs#InternalError", Some("InternalError")),
            (Service::S3, Fault::Throttle) => xml(503, "SlowDown"),
            (Service::S3, _) => xml(500, "InternalError"),
        }
    }
}

/// Why the proxy closed a connection without an answer (hyper closes it when the service fails).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the test proxy")
    }
}

impl std::error::Error for Reset {}

/// A proxy on 127.0.0.1 in front of moto that injects faults into a share of the calls.
struct FaultProxy {
    url: String,
    /// Calls out of a thousand answered with a fault; 1000 is an outage.
    per_mille: Arc<AtomicU32>,
    injected: Arc<Mutex<BTreeMap<(Service, Fault), u64>>>,
    outage: Arc<Outage>,
    server: tokio::task::JoinHandle<()>,
}

/// An outage armed to start at the next DynamoDB TransactWriteItems: every call fails while it lasts.
#[derive(Default)]
struct Outage {
    /// How long the armed outage will last.
    armed: Mutex<Option<Duration>>,
    /// When the outage under way ends.
    until: Mutex<Option<Instant>>,
}

impl Outage {
    /// Whether a call made now fails for the outage (starting it, if armed, at a transactional write).
    fn fails(&self, req: &hyper::Request<Incoming>) -> bool {
        let now = Instant::now();
        let transactional = req.headers().get("x-amz-target").is_some_and(|t| t.as_bytes().ends_with(b".TransactWriteItems"));
        if transactional && let Some(length) = self.armed.lock().unwrap().take() {
            *self.until.lock().unwrap() = Some(now + length);
        }
        self.until.lock().unwrap().is_some_and(|until| now < until)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct ProxyState {
    /// Held while a DynamoDB call is forwarded. moto serves requests on threads but keeps DynamoDB
    /// tables without a lock: under concurrent calls it answered a TransactWriteItems with its own
    /// HTML 500 and once left a finished request's feature without the location its transaction
    /// wrote. DynamoDB makes each call atomic; one call at a time gives moto that too.
    dynamodb_one_at_a_time: tokio::sync::Mutex<()>,
    upstream: String,
    client: reqwest::Client,
    per_mille: Arc<AtomicU32>,
    rng: Mutex<Lcg>,
    injected: Arc<Mutex<BTreeMap<(Service, Fault), u64>>>,
    outage: Arc<Outage>,
}

impl FaultProxy {
    async fn start(upstream: &str, seed: u64) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let per_mille = Arc::new(AtomicU32::new(0));
        let injected = Arc::new(Mutex::new(BTreeMap::new()));
        let outage = Arc::new(Outage::default());
        let state = Arc::new(ProxyState {
            dynamodb_one_at_a_time: tokio::sync::Mutex::new(()),
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            per_mille: per_mille.clone(),
            rng: Mutex::new(Lcg(seed)),
            injected: injected.clone(),
            outage: outage.clone(),
        });
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { state.handle(req).await }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        FaultProxy { url, per_mille, injected, outage, server }
    }

    /// Arms an outage of `length`, to start at the next transactional write.
    fn arm_outage(&self, length: Duration) {
        *self.outage.armed.lock().unwrap() = Some(length);
    }

    /// Whether the armed outage has started and ended.
    fn outage_over(&self) -> bool {
        self.outage.until.lock().unwrap().is_some_and(|until| Instant::now() >= until)
    }

    fn set_per_mille(&self, n: u32) {
        self.per_mille.store(n, Ordering::SeqCst);
    }

    fn injected(&self) -> BTreeMap<(Service, Fault), u64> {
        self.injected.lock().unwrap().clone()
    }
}

impl ProxyState {
    async fn handle(&self, req: hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, Reset> {
        let service = Service::of(&req);
        let per_mille = if service.is_some() && self.outage.fails(&req) { 1000 } else { u64::from(self.per_mille.load(Ordering::SeqCst)) };
        let fault = service.and_then(|service| {
            let mut rng = self.rng.lock().unwrap();
            (rng.below(1000) < per_mille).then(|| (service, FAULTS[rng.below(4) as usize]))
        });
        if let Some(key) = fault {
            *self.injected.lock().unwrap().entry(key).or_default() += 1;
        }
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(|_| Reset)?.to_bytes();
        match fault {
            Some((_, Fault::ResetBefore)) => return Err(Reset),
            Some((service, f @ (Fault::Throttle | Fault::ServerError))) => return Ok(service.answer(f)),
            _ => {}
        }
        let _one_at_a_time = match service {
            Some(Service::DynamoDb) => Some(self.dynamodb_one_at_a_time.lock().await),
            _ => None,
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut forward = self.client.request(parts.method, format!("{}{path}", self.upstream)).body(body);
        for (name, value) in &parts.headers {
            if !matches!(name.as_str(), "host" | "content-length" | "connection" | "transfer-encoding" | "expect") {
                forward = forward.header(name, value);
            }
        }
        let res = forward.send().await.map_err(|_| Reset)?;
        let mut answer = hyper::Response::builder().status(res.status());
        for (name, value) in res.headers() {
            if !matches!(name.as_str(), "connection" | "transfer-encoding") {
                answer = answer.header(name, value);
            }
        }
        let bytes = res.bytes().await.map_err(|_| Reset)?;
        if matches!(fault, Some((_, Fault::ResetAfter))) {
            return Err(Reset);
        }
        Ok(answer.body(Full::new(bytes)).unwrap())
    }
}

fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_errors_and_resets_from_aws_are_retried_and_nothing_is_lost() {
    use md5::{Digest, Md5};
    let products = env_number("GRANARY_THROTTLE_PRODUCTS", 40).max(8) as u32;
    let per_mille = env_number("GRANARY_THROTTLE_PER_MILLE", 100).min(1000) as u32;
    let seed = env_number(
        "GRANARY_FAULT_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7),
    );
    println!("throttling run: {products} products, {per_mille}‰ of calls failed, GRANARY_FAULT_SEED={seed}");
    // Each function works through its batches one message at a time, and every retry waits (up to a
    // second, then two): a larger run needs longer.
    let patience = Duration::from_secs(60 + 3 * u64::from(products) * u64::from(per_mille.max(100)) / 100);
    let moto = granary_aws::emulator::shared_moto();
    let proxy = FaultProxy::start(moto, seed).await;
    let dir = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // Short visibility timeouts, so that a reported failure comes back within seconds; 20 s for the
    // feature queues, since a batch of up to 100 on moto (about a third of a second a creation) could
    // outlast 3 s and be handed to the other worker while it runs.
    let template_path = with_mirror_queue(template_with_visibilities(scratch.path(), &[("", 3), ("Feature", 20), ("OrderCreate", 10)]));
    let prefix = format!("thr{}-", std::process::id());
    let roots = sources.path().to_str().unwrap().to_owned();
    let r = Runner::start_with(
        dir.path(),
        &["--backend", "aws", "--provision"],
        &[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("GRANARY_AWS_NAME_PREFIX", &prefix),
            ("GRANARY_LOCAL_TEMPLATE", template_path.to_str().unwrap()),
            ("GRANARY_STORAGE_FILE_ROOTS", &roots),
            ("GRANARY_MODEL_CACHE_SECS", "0"),
            SHORT_ORDER_LEASE,
            // A recipient's failed delivery is tried again after 1 s, then 2, 4, 8 and 16 (not 5, 10 … 80).
            ("GRANARY_NOTIFICATION_RETRY_SECS", "1"),
        ],
    );
    // Moto straight, as the producers and the checks reach it.
    let resources = granary_local::resources::load(Some(&template_path)).unwrap();
    let dead_letter_queues: BTreeSet<String> = resources.queues.iter().filter_map(|q| q.dead_letter_queue.clone()).collect();
    let aws = granary_aws::Aws::connect(&resources, granary_aws::emulator::options(moto, &prefix)).await.backend();

    // Set up with the faults off: models, the recipient, the users.
    let c = client();
    let (admin, ann) = ordering_with_a_mirror(&c, &r, dir.path()).await;

    let meta = json!({"sessionOwner": "throttling", "session": "s1", "storages": [{"pluginBusinessId": "online"}]});
    let message = |id: String, feature: Value| {
        OutgoingMessage::new(json!({"metadata": meta, "feature": feature}).to_string())
            .attribute("regards.request.type", "CREATION")
            .attribute("regards.request.id", id)
    };
    let mut contents = BTreeMap::new();
    let mut wave = vec![message(
        "c-ds".into(),
        json!({"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
               "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}}),
    )];
    for i in 0..products {
        let content: Vec<u8> = (0..20_000u32).map(|b| ((b * 7 + i) % 251) as u8).collect();
        let path = sources.path().join(format!("t-{i}.bin"));
        std::fs::write(&path, &content).unwrap();
        let checksum = hex::encode(Md5::digest(&content));
        let feature = json!({"type": "Feature", "id": format!("t-{i}"), "entityType": "DATA", "model": "P", "tags": ["S2"], "geometry": null,
            "properties": {"n": i}, "files": [{"locations": [{"url": url::Url::from_file_path(&path).unwrap().to_string()}],
            "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream", "filename": format!("t-{i}.bin"),
                           "filesize": content.len(), "algorithm": "MD5", "checksum": checksum}}]});
        contents.insert(format!("t-{i}"), checksum);
        wave.push(message(format!("c-{i}"), feature));
    }
    let sent = wave.len();

    // The faults on, an outage armed for the first transactional write (the SDK's three attempts take
    // at most 3 s: every call made in its 10 s runs out of them), the messages sent; the order placed
    // and its files downloaded while the faults go on (each HTTP call may meet one and fail: it is
    // tried again).
    proxy.set_per_mille(per_mille);
    proxy.arm_outage(Duration::from_secs(10));
    for batch in granary_ports::queue::batches(wave) {
        aws.queue.send_batch("feature-normal", batch).await.unwrap();
    }
    let deadline = Instant::now() + patience;
    while !proxy.outage_over() {
        assert!(Instant::now() < deadline, "no transactional write within {patience:?}: the outage never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ordered: Vec<String> = (0..4).map(|i| format!("t-{i}")).collect();
    let deadline = Instant::now() + patience;
    let order = loop {
        if let Some(order) = place_order(&c, &r, &ann, &ordered, "through the faults").await {
            break order;
        }
        if Instant::now() > deadline {
            let get = |path: String| {
                let (c, url, admin) = (c.clone(), r.url(&path), admin.clone());
                async move { c.get(url).bearer_auth(admin).send().await.unwrap().text().await.unwrap() }
            };
            let mut products = String::new();
            for id in &ordered {
                let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid(id));
                products.push_str(&format!("\n{id}: {}", get(format!("/products/{urn}")).await));
            }
            let basket = c.get(r.url("/order/basket")).bearer_auth(&ann).send().await.unwrap().text().await.unwrap();
            let orders = c.get(r.url("/user/orders")).bearer_auth(&ann).send().await.unwrap().text().await.unwrap();
            panic!("the order was not placed within {patience:?}{products}\nbasket: {basket}\norders: {orders}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut downloaded = Downloads::default();
    let deadline = Instant::now() + patience;
    while downloaded.len() < 4 {
        if Instant::now() > deadline {
            let get = |path: String| {
                let (c, url, ann) = (c.clone(), r.url(&path), ann.clone());
                async move { c.get(url).bearer_auth(ann).send().await.unwrap().text().await.unwrap() }
            };
            let mut files = String::new();
            for i in 0..4 {
                let res = no_redirect_client().get(r.url(&format!("/orders/files/{order}.1.{i}"))).bearer_auth(&ann).send().await.unwrap();
                files.push_str(&format!("\n{i}: {} {}", res.status(), res.text().await.unwrap()));
            }
            let order_logs = [r.logged("order-create"), r.logged("suborder-dispatch")].concat();
            panic!(
                "the order's files were not all downloaded within {patience:?}: {downloaded:?}\norder: {}{files}\nrunner's order log lines: {order_logs:#?}",
                get(format!("/user/orders/{order}")).await
            );
        }
        download_available(&c, &r, &ann, &order, &mut downloaded).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + patience;
    let final_states = loop {
        let mut states = HashMap::new();
        let mut granted = Vec::new();
        for state in ["GRANTED", "SUCCESS", "ERROR", "DENIED"] {
            let url = r.url(&format!("/features/requests?state={state}&size=1000"));
            let Ok(res) = c.get(url).bearer_auth(&admin).send().await else { continue };
            let Ok(page) = res.json::<Value>().await else { continue };
            let content = page["content"].as_array().cloned().unwrap_or_default();
            if state == "GRANTED" {
                granted = content.iter().map(|v| format!("{} {}", v["requestId"], v["step"])).collect();
            }
            states.insert(state, content.len());
        }
        if states.len() == 4 && states["GRANTED"] == 0 && states.values().sum::<usize>() == sent {
            break states;
        }
        if Instant::now() > deadline {
            let mut dead = Vec::new();
            for queue in &dead_letter_queues {
                let depth = aws.queue.depth(queue).await.map(|d| d.total()).unwrap_or(0);
                if depth > 0 {
                    let got = aws.queue.receive(queue, 10, Some(Duration::from_secs(1)), Duration::ZERO).await.unwrap_or_default();
                    let bodies: Vec<String> =
                        got.iter().map(|m| format!("{:?} {}", m.attributes, m.body.chars().take(300).collect::<String>())).collect();
                    dead.push(format!("{queue}: {depth}: {bodies:?}"));
                }
            }
            // What the requests table holds for each request still waiting, and the outbox.
            let requests = Config::from_env().requests_table;
            let mut held = Vec::new();
            for id in granted.iter().filter_map(|g| g.split('"').nth(1)) {
                let page = aws.table.query(Query::partition(&requests, format!("R#{id}"))).await;
                held.push(format!("{id}: {:?}", page.map(|p| p.items)));
            }
            let outbox = aws.table.query(Query::partition(&requests, "pending").on_index("outbox")).await.map(|p| p.items.len());
            panic!(
                "not every request ended within {patience:?}: {states:?} of {sent}; granted: {granted:?}; {} batches reported failures; dead letters: {dead:?}; outbox: {outbox:?}\n{}\nlog: {:?}",
                r.logged("messages reported as failed").len(),
                held.join("\n"),
                r.logged("c-")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let injected = proxy.injected();
    proxy.set_per_mille(0);
    println!("faults injected: {injected:?}");
    assert_eq!(final_states["SUCCESS"], sent, "every request succeeded: {final_states:?}");

    // Faults of every kind, into every service, so that the run proves something.
    for fault in FAULTS {
        assert!(injected.iter().any(|((_, f), n)| *f == fault && *n > 0), "no {fault:?} injected: {injected:?}");
    }
    for service in [Service::DynamoDb, Service::Sqs, Service::S3] {
        assert!(injected.iter().any(|((s, _), n)| *s == service && *n > 0), "no fault injected into {service:?}: {injected:?}");
    }

    // Some calls ran out of retries (the outage saw to it, having started at a handler's write):
    // their messages were reported as failed and came back.
    let reported = r.logged("messages reported as failed");
    assert!(!reported.is_empty(), "no handler reported a failed message: the retry budget never ran out");
    println!("{} batches with messages reported as failed", reported.len());

    // One version each, its file stored once in S3 with the right checksum.
    for (id, checksum) in &contents {
        let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid(id));
        let v2 = c.get(r.url(&format!("/features/{}", urn.replace(":V1", ":V2")))).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(v2.status(), 404, "{id} has a second version");
        let f: Value = c.get(r.url(&format!("/features/{urn}"))).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        let stored: Vec<&Value> =
            f["feature"]["files"][0]["locations"].as_array().unwrap().iter().filter(|l| l["storage"] == "online").collect();
        assert_eq!(stored.len(), 1, "{id} stored once: {f}");
        assert_eq!(stored[0]["url"], format!("s3://storage/online/{checksum}"), "{f}");
    }

    // The order: done, each file once, the downloaded bytes the stored ones.
    let done: Value = wait_for("the order to be done", Duration::from_secs(60), || async {
        let v: Value = c.get(r.url(&format!("/user/orders/{order}"))).bearer_auth(&ann).send().await.ok()?.json().await.ok()?;
        (v["status"] == "DONE").then_some(v)
    })
    .await;
    assert_eq!(done["filesCount"], 4, "{done}");
    let files: Value =
        c.get(r.url(&format!("/orders/{order}/files/available?size=100"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    let names: BTreeSet<String> = files["content"].as_array().unwrap().iter().map(|f| f["filename"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names.len(), 4, "{files}");
    let link = files["content"][0]["download"].as_str().unwrap();
    let bytes = c.get(r.url(link)).bearer_auth(&ann).send().await.unwrap().bytes().await.unwrap();
    let name = files["content"][0]["filename"].as_str().unwrap().trim_end_matches(".bin");
    assert_eq!(hex::encode(Md5::digest(&bytes)), contents[name], "the downloaded bytes of {name}");

    // The recipient was told of every creation (a redelivery is dropped by its id).
    let mut told = BTreeSet::new();
    let deadline = Instant::now() + patience;
    while told.len() < sent && Instant::now() < deadline {
        let got = aws.queue.receive("mirror", 10, None, Duration::from_millis(200)).await.unwrap();
        if !got.is_empty() {
            aws.queue.delete_batch("mirror", got.iter().map(|m| m.receipt_handle.clone()).collect()).await.unwrap();
        }
        for m in got {
            let v: Value = serde_json::from_str(&m.body).unwrap();
            assert_eq!(v["metadata"]["action"], "CREATED", "{v}");
            told.insert(v["payload"]["urn"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(told.len(), sent, "the recipient was told of {} creations of {sent}", told.len());

    // Nothing went to a dead-letter queue.
    for queue in &dead_letter_queues {
        let depth = aws.queue.depth(queue).await.unwrap().total();
        if depth > 0 {
            let got = aws.queue.receive(queue, 10, None, Duration::ZERO).await.unwrap();
            let held: Vec<String> = got.iter().map(|m| format!("{:?} {}", m.attributes, m.body)).collect();
            panic!("{queue} holds {depth} messages: {held:#?}\nlog: {:#?}", r.logged("storage"));
        }
    }
}
