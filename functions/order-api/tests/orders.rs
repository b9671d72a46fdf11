//! Orders end to end on the embedded backend: a basket filled through basket-api is ordered through
//! order-api (PENDING at once, basket emptied), expanded by order-create into suborders by the split
//! rules, and shown with its status, counts, suborders, expiration and links. An expansion killed
//! halfway leaves the order PENDING and the next delivery finishes it with no suborder or file twice.

use async_trait::async_trait;
use basket_api::BasketApi;
use granary_lambda::Config;
use granary_lambda::http::apigw_request;
use granary_lambda::sqs::sqs_event;
use granary_ports::{Backend, Item, Key, Page, PortError, PortResult, Query, Table, TxOp, Update};
use granary_testkit::{Site, answer, dataset, file, product};
use lambda_runtime::{Context, LambdaEvent};
use order_api::OrderApi;
use order_create::OrderCreate;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

type Caller = Option<(&'static str, &'static [&'static str])>;
const ANN: Caller = Some(("ann@example.org", &["s2"]));
const BOB: Caller = Some(("bob@example.org", &["s2"]));
const ADMIN: Caller = Some(("root@example.org", &["admin"]));
const MIB: u64 = 1024 * 1024;

struct Apis {
    basket: BasketApi,
    orders: OrderApi,
    create: OrderCreate,
}

async fn call(handler: &OrderApi, method: &str, path: &str, body: Option<&str>, caller: Caller) -> (u16, Value) {
    answer(handler.handle(apigw_request(method, path, "", body, caller)).await.unwrap())
}

async fn select(apis: &Apis, body: Value, caller: Caller) {
    let (status, basket) =
        answer(apis.basket.handle(apigw_request("POST", "/order/basket/selection", "", Some(&body.to_string()), caller)).await.unwrap());
    assert_eq!(status, 200, "{basket}");
}

/// `n` products of dataset S2, each with `stored` stored files of `size` bytes and one referenced quicklook.
fn products(prefix: &str, n: usize, stored: usize, size: u64) -> Vec<Value> {
    (0..n)
        .map(|p| {
            let mut files: Vec<Value> = (0..stored)
                .map(|f| {
                    file(
                        &format!("{prefix}{p}-{f}.dat"),
                        "RAWDATA",
                        size,
                        &format!("{:016x}{:016x}", p, f),
                        &format!("s3://b/nearline/{prefix}{p}/{f}"),
                        Some("nearline"),
                    )
                })
                .collect();
            files.push(file(
                &format!("{prefix}{p}.jpg"),
                "QUICKLOOK_SD",
                1000,
                &format!("{:016x}{:016x}", p, 999_999),
                "https://ql.example/q.jpg",
                None,
            ));
            product(&format!("{prefix}{p:04}"), &["S2"], json!({"mission": prefix}), Value::Null, files)
        })
        .collect()
}

async fn site(config: Config) -> (Site, Apis) {
    let site = Site::new(config).await;
    let spec = file("spec.pdf", "RAWDATA", 2048, "9e107d9d372bb6826bd81d3542a419d6", "https://x/spec.pdf", None);
    site.create(&[dataset("S2", &["s2"], vec![spec])]).await;
    let apis = Apis {
        basket: BasketApi::new(site.backend.clone(), site.config.clone()),
        orders: OrderApi::new(site.backend.clone(), site.config.clone()),
        create: OrderCreate::new(site.backend.clone(), site.config.clone()),
    };
    (site, apis)
}

/// Delivers every queued expansion message to `create`; returns how many it failed.
async fn expand(site: &Site, create: &OrderCreate) -> usize {
    let mut failed = 0;
    for m in site.drain("order-create").await {
        let r = create
            .handle(LambdaEvent::new(sqs_event("order-create", std::slice::from_ref(&m)).unwrap(), Context::default()))
            .await
            .unwrap();
        if !r.batch_item_failures.is_empty() {
            failed += 1;
            // As SQS would: back on the queue.
            site.backend.queue.send_batch("order-create", vec![granary_ports::OutgoingMessage::new(m.body.clone())]).await.unwrap();
        }
    }
    failed
}

async fn order_files(site: &Site, order_id: &str) -> Vec<Item> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (items, next) =
            granary_stores::orders::OrderStore::new("orders", "requests").files(&site.backend, order_id, None, after, 1000).await.unwrap();
        all.extend(items);
        match next {
            Some(c) => after = Some(c),
            None => return all,
        }
    }
}

#[tokio::test]
async fn an_order_is_pending_at_once_then_running_with_suborders_split_by_the_rules() {
    let mut config = Config::defaults();
    config.order_settings.suborder_max_bytes = 10 * MIB;
    let (site, apis) = site(config).await;
    // 30 products: 3 stored files of 1 MiB each and a referenced quicklook; one more with a 50 MiB file.
    site.create(&products("p", 30, 3, MIB)).await;
    site.create(&[product(
        "huge",
        &["S2"],
        json!({"mission": "h"}),
        Value::Null,
        vec![file("huge.dat", "RAWDATA", 50 * MIB, "ffffffffffffffffffffffffffffffff", "s3://b/nearline/huge", Some("nearline"))],
    )])
    .await;
    select(&apis, json!({"datasetUrn": "S2"}), ANN).await;

    assert_eq!(call(&apis.orders, "POST", "/user/orders", Some(&json!({"label": "x".repeat(51)}).to_string()), ANN).await.0, 400);
    let (status, order) = call(&apis.orders, "POST", "/user/orders", Some(r#"{"label": "my first order"}"#), ANN).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], "PENDING");
    let id = order["id"].as_str().unwrap().to_owned();
    // The basket went with the order.
    let (_, basket) = answer(apis.basket.handle(apigw_request("GET", "/order/basket", "", None, ANN)).await.unwrap());
    assert_eq!(basket["datasetSelections"], json!([]));
    assert_eq!(call(&apis.orders, "POST", "/user/orders", None, ANN).await.0, 400, "empty basket");
    // A change read before the order cannot land after it: the emptied basket has a newer version.
    let baskets = granary_stores::baskets::BasketStore::new("orders");
    let (mut stale, version) = baskets.read(&site.backend, "ann@example.org").await.unwrap();
    assert!(stale.is_empty() && version > 1);
    stale.next_id = 99;
    assert_eq!(baskets.write(&site.backend, &stale, version - 1).await.unwrap(), granary_stores::baskets::BasketWrite::Conflict);
    // Labels are unique per owner.
    select(&apis, json!({"entityIdsToInclude": ["p0001"]}), ANN).await;
    assert_eq!(call(&apis.orders, "POST", "/user/orders", Some(r#"{"label": "my first order"}"#), ANN).await.0, 409);

    assert_eq!(expand(&site, &apis.create).await, 0);
    let (status, order) = call(&apis.orders, "GET", &format!("/user/orders/{id}"), None, ANN).await;
    assert_eq!(status, 200);
    assert_eq!(order["status"], "RUNNING", "{order}");
    // 90 stored files of 1 MiB in suborders of at most 10 MiB (10 files), the 50 MiB file alone, 30
    // quicklooks and the dataset's spec (referenced) in one referenced suborder.
    let suborders = order["suborders"].as_array().unwrap();
    let internal: Vec<u64> = suborders.iter().filter(|s| s["kind"] == "INTERNAL").map(|s| s["filesCount"].as_u64().unwrap()).collect();
    let external: Vec<u64> = suborders.iter().filter(|s| s["kind"] == "EXTERNAL").map(|s| s["filesCount"].as_u64().unwrap()).collect();
    assert_eq!(internal.iter().sum::<u64>(), 91);
    assert!(internal.iter().all(|n| *n <= 10), "{internal:?}");
    assert_eq!(internal.len(), 10, "nine of ten files and the huge one: {internal:?}");
    assert_eq!(external, [31]);
    assert!(
        suborders.iter().filter(|s| s["kind"] == "INTERNAL").all(|s| s["filesSize"].as_u64().unwrap() <= 10 * MIB || s["filesCount"] == 1)
    );
    assert_eq!(order["filesCount"], 122);
    assert_eq!(order["availableFilesCount"], 31);
    assert_eq!(order["warnings"].as_array().unwrap().len(), 1, "{order}");
    assert!(order["warnings"][0].as_str().unwrap().contains("huge.dat"));
    assert_eq!(order["datasetTasks"][0]["objectsCount"], 31);
    // Expiration: (10 internal suborders + 2) x 240 h, capped at 168 h.
    let created: chrono::DateTime<chrono::Utc> = order["creationDate"].as_str().unwrap().parse().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = order["expirationDate"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires - created, chrono::Duration::hours(168));
    let rels: Vec<&str> = order["links"].as_array().unwrap().iter().map(|l| l["rel"].as_str().unwrap()).collect();
    assert_eq!(rels, ["pause", "download"]);
    // Every file once, with its state.
    let files = order_files(&site, &id).await;
    assert_eq!(files.len(), 122);
    assert_eq!(files.iter().filter(|f| f.get_str("state") == Some("AVAILABLE")).count(), 31);

    // Only the owner and admins see it; admins search every order.
    assert_eq!(call(&apis.orders, "GET", &format!("/user/orders/{id}"), None, BOB).await.0, 404);
    assert_eq!(call(&apis.orders, "GET", &format!("/user/orders/{id}"), None, ADMIN).await.0, 200);
    assert_eq!(call(&apis.orders, "GET", "/user/orders", None, BOB).await.1["content"], json!([]));
    let (_, mine) = call(&apis.orders, "GET", "/user/orders", None, ANN).await;
    assert_eq!(mine["content"].as_array().unwrap().len(), 1);
    assert_eq!(call(&apis.orders, "POST", "/orders/search", Some(r#"{"status": "RUNNING"}"#), ANN).await.0, 403);
    let (_, found) = call(&apis.orders, "POST", "/orders/search", Some(r#"{"status": "RUNNING"}"#), ADMIN).await;
    assert_eq!(found["content"][0]["id"], id.as_str());
    let (_, none) = call(&apis.orders, "POST", "/orders/search", Some(r#"{"status": "DONE"}"#), ADMIN).await;
    assert_eq!(none["content"], json!([]));
}

#[tokio::test]
async fn referenced_files_only_are_done_at_once_and_nothing_to_order_ends_with_a_warning() {
    let (site, apis) = site(Config::defaults()).await;
    site.create(&products("q", 3, 0, 0)).await;
    select(&apis, json!({"datasetUrn": "S2"}), ANN).await;
    let (_, order) = call(&apis.orders, "POST", "/user/orders", None, ANN).await;
    assert!(order["label"].as_str().unwrap().starts_with("Order of "));
    expand(&site, &apis.create).await;
    let (_, order) = call(&apis.orders, "GET", &format!("/user/orders/{}", order["id"].as_str().unwrap()), None, ANN).await;
    assert_eq!((order["status"].as_str(), order["percentCompleted"].as_i64()), (Some("DONE"), Some(100)), "{order}");
    assert_eq!(order["availableFilesCount"], 4, "three quicklooks and the dataset's spec");

    // A file filter that keeps nothing: DONE_WITH_WARNING, saying why.
    let (_, basket) = answer(
        apis.basket.handle(apigw_request("POST", "/order/basket/selection", "", Some(r#"{"datasetUrn": "S2"}"#), BOB)).await.unwrap(),
    );
    let ds = basket["datasetSelections"][0]["id"].as_u64().unwrap();
    let filters = format!("/order/basket/dataset/{ds}/updateFileFilters");
    answer(apis.basket.handle(apigw_request("PUT", &filters, "", Some(r#"{"fileNamePattern": "nothing"}"#), BOB)).await.unwrap());
    let (_, order) = call(&apis.orders, "POST", "/user/orders", None, BOB).await;
    expand(&site, &apis.create).await;
    let (_, order) = call(&apis.orders, "GET", &format!("/user/orders/{}", order["id"].as_str().unwrap()), None, BOB).await;
    assert_eq!(
        (order["status"].as_str(), order["message"].as_str()),
        (Some("DONE_WITH_WARNING"), Some("No file match filters")),
        "{order}"
    );
}

/// A table that fails every transaction after the first `transactions`, and every checkpoint after the
/// first `checkpoints`: an expansion killed halfway.
/// With `dies`, every write after the first failure fails too, as from a process that was killed;
/// without, only the transactions (and checkpoints) past the limits fail: the rest works, as after a
/// failing call of a live process.
struct Crashing {
    inner: Arc<dyn Table>,
    transactions: usize,
    checkpoints: usize,
    seen: AtomicUsize,
    saved: AtomicUsize,
    dies: bool,
    dead: std::sync::atomic::AtomicBool,
}

impl Crashing {
    fn new(inner: Arc<dyn Table>, transactions: usize, checkpoints: usize, dies: bool) -> Self {
        Self { inner, transactions, checkpoints, seen: AtomicUsize::new(0), saved: AtomicUsize::new(0), dies, dead: Default::default() }
    }

    /// The failure of a write, recording the death it stands for.
    fn killed(&self) -> PortError {
        self.dead.store(self.dies, Ordering::SeqCst);
        PortError::Unavailable("killed".into())
    }

    fn alive(&self) -> PortResult<()> {
        if self.dead.load(Ordering::SeqCst) { Err(PortError::Unavailable("dead".into())) } else { Ok(()) }
    }
}

#[async_trait]
impl Table for Crashing {
    fn take_sent_with_commit(&self, event_id: &str) -> bool {
        self.inner.take_sent_with_commit(event_id)
    }
    async fn get(&self, table: &str, key: &Key) -> PortResult<Option<Item>> {
        self.inner.get(table, key).await
    }
    async fn put(&self, table: &str, item: Item, cond: Option<granary_ports::Cond>) -> PortResult<()> {
        self.alive()?;
        self.inner.put(table, item, cond).await
    }
    async fn update(&self, table: &str, key: &Key, updates: Vec<Update>, cond: Option<granary_ports::Cond>) -> PortResult<Item> {
        self.alive()?;
        if updates.iter().any(|u| u.attribute_name() == "checkpoint") && self.saved.fetch_add(1, Ordering::SeqCst) >= self.checkpoints {
            return Err(self.killed());
        }
        self.inner.update(table, key, updates, cond).await
    }
    async fn delete(&self, table: &str, key: &Key, cond: Option<granary_ports::Cond>) -> PortResult<Option<Item>> {
        self.alive()?;
        self.inner.delete(table, key, cond).await
    }
    async fn transact(&self, ops: Vec<TxOp>) -> PortResult<()> {
        self.alive()?;
        if self.seen.fetch_add(1, Ordering::SeqCst) >= self.transactions {
            return Err(self.killed());
        }
        self.inner.transact(ops).await
    }
    async fn query(&self, query: Query) -> PortResult<Page> {
        self.inner.query(query).await
    }
}

#[tokio::test]
async fn an_expansion_killed_halfway_is_finished_by_the_next_delivery_with_nothing_twice() {
    let mut config = Config::defaults();
    config.order_settings.suborder_max_bytes = 4 * MIB;
    let (site, apis) = site(config.clone()).await;
    // 450 products (5 batches of 100), 2 stored files of 1 MiB and a quicklook each.
    site.create(&products("k", 450, 2, MIB)).await;
    select(&apis, json!({"datasetUrn": "S2"}), ANN).await;
    let (_, order) = call(&apis.orders, "POST", "/user/orders", None, ANN).await;
    let id = order["id"].as_str().unwrap().to_owned();

    // Killed in its first batch, then after writing its last batch (450 products: five batches) but
    // before checkpointing it.
    for (transactions, checkpoints) in [(3, usize::MAX), (usize::MAX, 4)] {
        let crashing = Crashing::new(site.backend.table.clone(), transactions, checkpoints, true);
        let doomed = OrderCreate::new(Backend { table: Arc::new(crashing), ..site.backend.clone() }, config.clone());
        assert_eq!(expand(&site, &doomed).await, 1, "the expansion is killed");
        let (_, order) = call(&apis.orders, "GET", &format!("/user/orders/{id}"), None, ANN).await;
        assert_eq!(order["status"], "PENDING", "a half-built order is not RUNNING");
        // Its lease still holds: a delivery now is told to come back later.
        assert_eq!(expand(&site, &apis.create).await, 1);
        site.clock.advance(chrono::Duration::seconds(901));
    }
    // The product whose files the killed expansion wrote last (past its checkpoint) is deleted
    // meanwhile: the resumed expansion must not leave them behind.
    let written = order_files(&site, &id).await;
    let last = written.iter().max_by_key(|f| f.key.sk.clone()).unwrap().get_str("urn").unwrap().to_owned();
    let mut deletion = granary_testkit::message("delete-1", &json!({"urn": last, "priority": "HIGH"}).to_string());
    deletion.attributes.insert("regards.request.type".into(), "DELETION".into());
    site.ingest_raw(&[deletion]).await;
    assert_eq!(expand(&site, &apis.create).await, 0);
    let (_, order) = call(&apis.orders, "GET", &format!("/user/orders/{id}"), None, ANN).await;
    assert_eq!(order["status"], "RUNNING", "{order}");
    let files = order_files(&site, &id).await;
    assert!(files.iter().all(|f| f.get_str("urn") != Some(last.as_str())), "files of the deleted product were left behind");
    assert_eq!(files.len(), 449 * 3 + 1, "each file once");
    let mut keys: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.get_str("urn").unwrap().to_owned(), f.get("file").unwrap()["checksum"].as_str().unwrap().to_owned()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 449 * 3 + 1, "no file twice");
    let suborders = order["suborders"].as_array().unwrap();
    let numbers: Vec<u64> = suborders.iter().map(|s| s["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>(), "suborders numbered without gaps");
    let in_suborders: u64 = suborders.iter().map(|s| s["filesCount"].as_u64().unwrap()).sum();
    assert_eq!(in_suborders, 449 * 3 + 1);
    assert_eq!(order["filesCount"], 449 * 3 + 1);
    // 898 stored files, 4 per suborder.
    assert_eq!(suborders.iter().filter(|s| s["kind"] == "INTERNAL").count(), 225);
    // A late redelivery changes nothing.
    site.backend
        .queue
        .send_batch("order-create", vec![granary_ports::OutgoingMessage::new(json!({"orderId": id}).to_string())])
        .await
        .unwrap();
    assert_eq!(expand(&site, &apis.create).await, 0);
    assert_eq!(order_files(&site, &id).await.len(), 449 * 3 + 1);
}

#[tokio::test]
async fn an_expansion_stopped_by_a_store_failure_lets_go_of_the_order_for_the_next_delivery() {
    let mut config = Config::defaults();
    config.order_settings.suborder_max_bytes = 4 * MIB;
    let (site, apis) = site(config.clone()).await;
    site.create(&products("f", 250, 2, MIB)).await;
    select(&apis, json!({"datasetUrn": "S2"}), ANN).await;
    let (_, order) = call(&apis.orders, "POST", "/user/orders", None, ANN).await;
    let id = order["id"].as_str().unwrap().to_owned();
    // The store fails the second batch's transaction (and every one after, through this handler),
    // not other writes: the expansion stops, and its lease goes with it (a killed one keeps it until
    // it runs out: see the test above).
    let failing = Crashing::new(site.backend.table.clone(), 1, usize::MAX, false);
    let interrupted = OrderCreate::new(Backend { table: Arc::new(failing), ..site.backend.clone() }, config.clone());
    assert_eq!(expand(&site, &interrupted).await, 1, "the expansion is interrupted");
    let (_, order) = call(&apis.orders, "GET", &format!("/user/orders/{id}"), None, ANN).await;
    assert_eq!(order["status"], "PENDING");
    // The redelivery resumes at once, with the clock where it was.
    assert_eq!(expand(&site, &apis.create).await, 0);
    let (_, order) = call(&apis.orders, "GET", &format!("/user/orders/{id}"), None, ANN).await;
    assert_eq!(order["status"], "RUNNING", "{order}");
    assert_eq!(order["filesCount"], 250 * 3 + 1, "each file once (the dataset's own too)");
    assert_eq!(order_files(&site, &id).await.len(), 250 * 3 + 1);
}

#[tokio::test]
async fn admins_read_and_set_quotas_users_read_their_own() {
    let (_site, apis) = site(Config::defaults()).await;
    let (status, mine) = call(&apis.orders, "GET", "/user/quota", None, ANN).await;
    assert_eq!(status, 200);
    assert_eq!((mine["maxFiles"].as_i64(), mine["maxBytes"].as_i64(), mine["custom"].as_bool()), (Some(-1), Some(-1), Some(false)));
    let quota = r#"{"maxFiles": 500, "maxBytes": 1073741824, "periodHours": 24}"#;
    assert_eq!(call(&apis.orders, "PUT", "/quotas/ann%40example.org", Some(quota), ANN).await.0, 403);
    assert_eq!(call(&apis.orders, "GET", "/quotas/bob%40example.org", None, ANN).await.0, 403);
    let (status, set) = call(&apis.orders, "PUT", "/quotas/ann%40example.org", Some(quota), ADMIN).await;
    assert_eq!((status, set["custom"].as_bool()), (200, Some(true)));
    let (_, mine) = call(&apis.orders, "GET", "/user/quota", None, ANN).await;
    assert_eq!((mine["maxFiles"].as_i64(), mine["periodHours"].as_i64()), (Some(500), Some(24)));
    let (_, bobs) = call(&apis.orders, "GET", "/quotas/bob@example.org", None, ADMIN).await;
    assert_eq!(bobs["custom"], false);
    let (status, problem) =
        call(&apis.orders, "PUT", "/quotas/bob@example.org", Some(r#"{"maxFiles": -3, "maxBytes": 1, "periodHours": 0}"#), ADMIN).await;
    assert_eq!((status, problem["errors"].as_array().unwrap().len()), (400, 2));
    assert_eq!(call(&apis.orders, "PUT", "/quotas/bob@example.org", Some(r#"{"maxFiles": 1}"#), ADMIN).await.0, 400);
}
