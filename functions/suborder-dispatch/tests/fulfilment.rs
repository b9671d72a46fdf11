//! Orders after their expansion, on the embedded backend with every handler real: suborders start in
//! the documented order within the pool and per-user limits, files become available from online
//! storage at once, from nearline storage after a restore, and from an external storage service
//! after its answer; downloads free slots and the next suborders start; orders end DONE,
//! DONE_WITH_WARNING or FAILED as their files did; quotas turn the files past them into errors; and
//! twenty dispatchers at once never pass a limit.

use basket_api::BasketApi;
use granary_lambda::Config;
use granary_lambda::http::apigw_request;
use granary_lambda::sqs::sqs_event;
use granary_ports::{Item, Key, OutgoingMessage, RestoreStatus, StorageClass};
use granary_stores::fulfilment::Fulfilment;
use granary_stores::orders::OrderStore;
use granary_testkit::{Site, answer, dataset, file, product};
use lambda_runtime::{Context, LambdaEvent};
use order_api::OrderApi;
use order_create::OrderCreate;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use storage_ready::StorageReady;
use suborder_dispatch::SuborderDispatch;

type Caller = Option<(&'static str, &'static [&'static str])>;
const ANN: Caller = Some(("ann@example.org", &["s2"]));
const BOB: Caller = Some(("bob@example.org", &["s2"]));
const KIB: u64 = 1024;

struct World {
    site: Site,
    basket: BasketApi,
    orders: OrderApi,
    create: OrderCreate,
    dispatch: Arc<SuborderDispatch>,
    ready: StorageReady,
}

impl World {
    async fn new(mut config: Config) -> Self {
        config.order_token_secret = granary_lambda::config::Secret("order-token-secret-of-these-tests-0123456789".into());
        let site = Site::new(config).await;
        site.create(&[dataset("S2", &["s2"], vec![])]).await;
        Self {
            basket: BasketApi::new(site.backend.clone(), site.config.clone()),
            orders: OrderApi::new(site.backend.clone(), site.config.clone()),
            create: OrderCreate::new(site.backend.clone(), site.config.clone()),
            dispatch: Arc::new(SuborderDispatch::new(site.backend.clone(), site.config.clone())),
            ready: StorageReady::new(site.backend.clone(), site.config.clone()),
            site,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&str>, caller: Caller) -> (u16, Value) {
        answer(self.orders.handle(apigw_request(method, path, "", body, caller)).await.unwrap())
    }

    /// A product of dataset S2 with one file stored in `storage` (an online object is written for real).
    async fn stored_product(&self, id: &str, size: u64, storage: &str) -> Value {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        let checksum = format!("{hex:0>32}");
        let (url, class) = match storage {
            "online" => (format!("s3://storage/online/{checksum}"), Some(StorageClass::Online)),
            "nearline" => (format!("s3://storage/nearline/{checksum}"), Some(StorageClass::Nearline)),
            other => (format!("https://{other}.invalid/{checksum}"), None),
        };
        if let Some(class) = class {
            let key = url.trim_start_matches("s3://storage/").to_owned();
            let body: granary_ports::BlobReader = Box::pin(std::io::Cursor::new(format!("content of {id}").into_bytes()));
            self.site.backend.blobs.put("storage", &key, body, class).await.unwrap();
        }
        product(id, &["S2"], json!({}), Value::Null, vec![file(&format!("{id}.dat"), "RAWDATA", size, &checksum, &url, Some(storage))])
    }

    /// `caller` orders `products` (created first): the order's id.
    async fn order(&self, caller: Caller, products: Vec<Value>) -> String {
        let ids: Vec<String> = products.iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect();
        self.site.create(&products).await;
        let body = json!({"entityIdsToInclude": ids}).to_string();
        let (status, basket) =
            answer(self.basket.handle(apigw_request("POST", "/order/basket/selection", "", Some(&body), caller)).await.unwrap());
        assert_eq!(status, 200, "{basket}");
        // The clock stands still: default labels ("Order of <date>") would repeat.
        let label = json!({"label": format!("order {}", uuid_like())}).to_string();
        let (status, order) = self.call("POST", "/user/orders", Some(&label), caller).await;
        assert_eq!(status, 201, "{order}");
        order["id"].as_str().unwrap().to_owned()
    }

    /// Runs order-create and suborder-dispatch until their queues are empty.
    async fn pump(&self) {
        for _ in 0..100 {
            let mut any = false;
            for m in self.site.drain("order-create").await {
                any = true;
                let r = self.create.handle(LambdaEvent::new(sqs_event("order-create", &[m]).unwrap(), Context::default())).await.unwrap();
                assert!(r.batch_item_failures.is_empty());
            }
            let messages = self.site.drain("suborder-dispatch").await;
            for batch in messages.chunks(10) {
                any = true;
                let r = self
                    .dispatch
                    .handle(LambdaEvent::new(sqs_event("suborder-dispatch", batch).unwrap(), Context::default()))
                    .await
                    .unwrap();
                assert!(r.batch_item_failures.is_empty());
            }
            if !any {
                return;
            }
        }
        panic!("the queues never emptied");
    }

    /// Delivers storage events to storage-ready; returns the bodies it dead-lettered.
    async fn storage_events(&self, events: &[Value]) -> Vec<String> {
        let messages: Vec<_> =
            events.iter().enumerate().map(|(i, e)| granary_testkit::message(&format!("ev{i}"), &e.to_string())).collect();
        let r = self.ready.handle(LambdaEvent::new(sqs_event("storage-ready", &messages).unwrap(), Context::default())).await.unwrap();
        assert!(r.batch_item_failures.is_empty());
        self.site.drain("storage-ready-dead-letter").await.into_iter().map(|m| m.body).collect()
    }

    async fn get(&self, id: &str, caller: Caller) -> Value {
        let (status, order) = self.call("GET", &format!("/user/orders/{id}"), None, caller).await;
        assert_eq!(status, 200, "{order}");
        order
    }

    /// The order's files by state.
    async fn files(&self, id: &str) -> Vec<Item> {
        OrderStore::new("orders", "requests").files(&self.site.backend, id, None, None, 1000).await.unwrap().0
    }

    /// Downloads every available file of the order: their ids.
    async fn download_all(&self, id: &str, caller: Caller) -> Vec<String> {
        let (status, page) = self.call("GET", &format!("/orders/{id}/files/available"), None, caller).await;
        assert_eq!(status, 200, "{page}");
        let mut done = Vec::new();
        for f in page["content"].as_array().unwrap().iter().filter(|f| f["state"] == "AVAILABLE") {
            let response = self.orders.handle(apigw_request("GET", f["download"].as_str().unwrap(), "", None, caller)).await.unwrap();
            assert_eq!(response.status(), 302);
            let location = response.headers()["location"].to_str().unwrap();
            // Stored files through a signed URL; a storage service's where the service keeps them.
            assert!(location.contains("signature=") || location.starts_with("https://tape.invalid/"), "{location}");
            done.push(f["id"].as_str().unwrap().to_owned());
        }
        done
    }
}

fn uuid_like() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn states(order: &Value) -> Vec<(u64, String)> {
    order["suborders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "INTERNAL")
        .map(|s| (s["filesSize"].as_u64().unwrap(), s["state"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn suborders_start_smallest_first_within_the_user_limit_and_downloads_let_the_next_ones_start() {
    let mut config = Config::defaults();
    // Every file is larger than a suborder may be: each has a suborder of its own.
    config.order_settings.suborder_max_bytes = 10 * KIB;
    config.dispatch_limits.per_user = 2;
    let world = World::new(config).await;
    // Ann's six suborders (one file each) of different sizes; then Bob's one small suborder.
    let mut ann = Vec::new();
    for (i, kib) in [900, 100, 800, 200, 700, 300].into_iter().enumerate() {
        ann.push(world.stored_product(&format!("a{i}"), kib * KIB, "online").await);
    }
    let ann_order = world.order(ANN, ann).await;
    let bob_order = world.order(BOB, vec![world.stored_product("b0", 50 * KIB, "online").await]).await;
    world.pump().await;

    // Ann's two smallest started (and, online, are done at once); the rest wait for her downloads.
    let order = world.get(&ann_order, ANN).await;
    let mut s = states(&order);
    s.sort();
    let done: Vec<u64> = s.iter().filter(|(_, st)| st == "DONE").map(|(b, _)| b / KIB).collect();
    assert_eq!(done, [100, 200], "{s:?}");
    assert_eq!(s.iter().filter(|(_, st)| st == "WAITING").count(), 4);
    assert_eq!(order["status"], "RUNNING");
    assert_eq!(order["availableFilesCount"], 2);
    assert_eq!(order["percentCompleted"], 33);
    // A file still waiting answers 202; another user's file does not exist for Bob.
    let pending = world.files(&ann_order).await.into_iter().find(|f| f.get_str("state") == Some("PENDING")).unwrap();
    let (sub, idx) = (pending.get_i64("suborder").unwrap(), &pending.key.sk[pending.key.sk.len() - 5..]);
    let pending_id = format!("{ann_order}.{sub}.{}", idx.parse::<u64>().unwrap());
    assert_eq!(world.call("GET", &format!("/orders/files/{pending_id}"), None, ANN).await.0, 202);
    assert_eq!(world.call("HEAD", &format!("/orders/files/{pending_id}"), None, ANN).await.0, 202);
    assert_eq!(world.call("GET", &format!("/orders/files/{pending_id}"), None, BOB).await.0, 404);
    assert_eq!(world.call("GET", &format!("/orders/{ann_order}/files/available"), None, BOB).await.0, 404);

    // Bob's small order did not wait behind Ann's large one.
    let bob = world.get(&bob_order, BOB).await;
    assert_eq!(bob["status"], "DONE", "{bob}");
    assert_eq!(bob["availableFilesCount"], 1);
    assert_eq!(world.download_all(&bob_order, BOB).await.len(), 1);
    let bob = world.get(&bob_order, BOB).await;
    assert_eq!((bob["availableFilesCount"].as_u64(), states(&bob)[0].1.as_str()), (Some(0), "FINISHED"));

    // Each download frees a slot of Ann's, and the next smallest starts, until all are done.
    let mut order_of_start = done.clone();
    for _ in 0..10 {
        let order = world.get(&ann_order, ANN).await;
        if order["status"] != "RUNNING" {
            break;
        }
        assert!(states(&order).iter().filter(|(_, st)| st == "DONE" || st == "RUNNING").count() <= 2, "Y=2 holds");
        assert!(!world.download_all(&ann_order, ANN).await.is_empty());
        world.pump().await;
        let mut now_done: Vec<u64> =
            states(&world.get(&ann_order, ANN).await).iter().filter(|(_, st)| st == "DONE").map(|(b, _)| b / KIB).collect();
        now_done.sort();
        order_of_start.extend(now_done);
    }
    order_of_start.dedup();
    assert_eq!(order_of_start, [100, 200, 300, 700, 800, 900]);
    let order = world.get(&ann_order, ANN).await;
    assert_eq!(order["status"], "DONE", "{order}");
    assert_eq!(order["percentCompleted"], 100);
    world.download_all(&ann_order, ANN).await;
    assert!(states(&world.get(&ann_order, ANN).await).iter().all(|(_, st)| st == "FINISHED"));
    // Every slot is back.
    let fulfilment = Fulfilment::new("orders", "requests", "suborder-dispatch", "order-events");
    assert_eq!(fulfilment.pool_running(&world.site.backend).await.unwrap(), 0);
    assert_eq!(fulfilment.user_slots(&world.site.backend, "ann@example.org").await.unwrap(), 0);
    // A downloaded file can be fetched again; its state stays DOWNLOADED.
    let again = world.files(&ann_order).await;
    assert!(again.iter().all(|f| f.get_str("state") == Some("DOWNLOADED")));
    // Each suborder told once it was done, each order once it ended.
    let events: Vec<Value> = world.site.drain("order-events").await.iter().map(|m| serde_json::from_str(&m.body).unwrap()).collect();
    let told = |order: &str, status: &str| events.iter().filter(|e| e["orderId"] == order && e["status"] == status).count();
    assert_eq!((told(&ann_order, "SUBORDER_DONE"), told(&ann_order, "DONE")), (6, 1), "{events:?}");
    assert_eq!((told(&bob_order, "SUBORDER_DONE"), told(&bob_order, "DONE")), (1, 1));
    let done = events.iter().find(|e| e["orderId"] == ann_order.as_str() && e["status"] == "DONE").unwrap();
    assert_eq!(done["owner"], "ann@example.org");
    assert_eq!(done["downloadLink"], format!("/user/orders/{ann_order}/metalink/download"));
}

#[tokio::test]
async fn nearline_files_wait_for_their_restore_and_service_files_for_the_service_answer() {
    let mut config = Config::defaults();
    config.default_quota = granary_domain::order::Quota { max_files: 100, max_bytes: -1, period_hours: 24 };
    let world = World::new(config).await;
    let products = vec![
        world.stored_product("on1", KIB, "online").await,
        world.stored_product("cold1", KIB, "nearline").await,
        world.stored_product("cold2", KIB, "nearline").await,
        world.stored_product("tape1", KIB, "tape").await,
        world.stored_product("tape2", KIB, "tape").await,
    ];
    let checksum = |p: &Value| p["files"][0]["attributes"]["checksum"].as_str().unwrap().to_owned();
    let url = |p: &Value| p["files"][0]["locations"][0]["url"].as_str().unwrap().to_owned();
    let (cold, tape) = ([&products[1], &products[2]], [&products[3], &products[4]]);
    let id = world.order(ANN, products.clone()).await;
    world.pump().await;

    let order = world.get(&id, ANN).await;
    assert_eq!(order["status"], "RUNNING");
    assert_eq!(order["availableFilesCount"], 1, "the online file at once");
    // Restores were asked for the nearline objects.
    for p in cold {
        let key = url(p).trim_start_matches("s3://storage/").to_owned();
        let head = world.site.backend.blobs.head("storage", &key).await.unwrap().unwrap();
        assert_eq!(head.restore, RestoreStatus::InProgress, "{key}: {:?}", world.files(&id).await);
    }
    // The storage service was asked for its two files, in REGARDS's shape.
    let asked = world.site.drain("files-restoration").await;
    assert_eq!(asked.len(), 1);
    let event: Value = serde_json::from_str(&asked[0].body).unwrap();
    let mut asked_for: Vec<String> = event["checksums"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    asked_for.sort();
    let mut expected: Vec<String> = tape.iter().map(|p| checksum(p)).collect();
    expected.sort();
    assert_eq!(asked_for, expected);
    assert_eq!(event["availabilityHours"], 240);
    assert!(event["groupId"].as_str().unwrap().contains(&id));
    // A redelivered storage job asks again and changes nothing else.
    world
        .site
        .backend
        .queue
        .send_batch("suborder-dispatch", vec![OutgoingMessage::new(json!({"start": {"orderId": id, "suborder": 1}}).to_string())])
        .await
        .unwrap();
    world.pump().await;
    assert_eq!(world.site.drain("files-restoration").await.len(), 1);
    assert_eq!(world.get(&id, ANN).await["availableFilesCount"], 1);
    let used = |w: &World| {
        let backend = w.site.backend.clone();
        async move {
            let window = granary_domain::dispatch::quota_window(backend.clock.now_ms(), 24);
            let item = backend.table.get("orders", &Key::new("QU#ann@example.org", window.to_string())).await.unwrap().unwrap();
            item.get_i64("files").unwrap()
        }
    };
    assert_eq!(used(&world).await, 5, "each file counted once");

    // A storage service's answer for a nearline file's checksum is not its restore: nothing waits on it.
    let early = json!({"type": "AVAILABLE", "checksum": checksum(cold[0]), "groupIds": ["g0"], "location": {"storage": "tape"}});
    assert_eq!(world.storage_events(&[early]).await.len(), 1, "dead-lettered");
    assert_eq!(world.get(&id, ANN).await["availableFilesCount"], 1);
    // The restores complete (S3's EventBridge event), the service answers one file and fails the other.
    let restored: Vec<Value> = cold
        .iter()
        .map(|p| {
            json!({"detail-type": "Object Restore Completed", "source": "aws.s3",
                   "detail": {"bucket": {"name": "physical-bucket"}, "object": {"key": url(p).trim_start_matches("s3://storage/")}}})
        })
        .collect();
    assert!(world.storage_events(&restored).await.is_empty());
    let answers = vec![
        json!({"type": "AVAILABLE", "checksum": checksum(tape[0]), "groupIds": ["g1"], "location": {"storage": "tape"}}),
        json!({"type": "AVAILABILITY_ERROR", "checksum": checksum(tape[1]), "groupIds": ["g1"], "message": "tape drive broken"}),
    ];
    assert!(world.storage_events(&answers).await.is_empty());
    // Repeated answers change nothing; an answer nothing waits for is dead-lettered with its reason.
    assert!(world.storage_events(&answers).await.is_empty());
    let stray = json!({"detail-type": "Object Restore Completed", "detail": {"object": {"key": "nearline/0000"}}});
    let dead = world.storage_events(&[stray]).await;
    assert_eq!(dead.len(), 1);
    world.pump().await;

    let order = world.get(&id, ANN).await;
    assert_eq!(order["status"], "DONE_WITH_WARNING", "{order}");
    assert_eq!(order["availableFilesCount"], 4);
    assert_eq!(order["filesInErrorCount"], 1);
    assert_eq!(used(&world).await, 4, "the failed file's quota is given back");
    let failed = world.files(&id).await.into_iter().find(|f| f.get_str("state") == Some("ERROR")).unwrap();
    let failed_id =
        format!("{id}.{}.{}", failed.get_i64("suborder").unwrap(), failed.key.sk[failed.key.sk.len() - 5..].parse::<u64>().unwrap());
    let (status, problem) = world.call("GET", &format!("/orders/files/{failed_id}"), None, ANN).await;
    assert_eq!(status, 422);
    assert!(problem["detail"].as_str().unwrap().contains("tape drive broken"), "{problem}");
    // The metalink lists the four files that can be downloaded, each with its size, hash and a public
    // URL opened by the order token alone.
    let response = world.orders.handle(apigw_request("GET", &format!("/user/orders/{id}/metalink/download"), "", None, ANN)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/metalink4+xml");
    let doc = match response.body() {
        lambda_http::Body::Text(t) => t.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(doc.matches("<file name=").count(), 4, "{doc}");
    assert!(doc.contains("<file name=\"on1/on1.dat\">") && doc.contains("<hash type=\"md5\">"), "{doc}");
    let first_url = doc.split("<url>").nth(1).unwrap().split("</url>").next().unwrap().replace("&amp;", "&");
    let (path, query) = first_url.trim_start_matches("http://localhost").split_once('?').unwrap();
    assert!(path.starts_with("/orders/public/files/"), "{first_url}");
    let public = |path: &str, query: &str, method: &str| {
        let req = apigw_request(method, path, query, None, None);
        let orders = &world.orders;
        async move { orders.handle(req).await.unwrap().status() }
    };
    assert_eq!(public(path, query, "HEAD").await, 200);
    assert_eq!(public(path, "orderToken=forged.token.value", "GET").await, 401);
    assert_eq!(public(path, "", "GET").await, 401);
    assert_eq!(public("/user/orders/metalink/download", query, "GET").await, 200);
    assert_eq!(world.call("GET", &format!("/user/orders/{id}/metalink/download"), None, BOB).await.0, 404);
    // A token of another order opens none of this order's files; an expired one opens nothing.
    let other = world.order(BOB, vec![world.stored_product("b5", KIB, "online").await]).await;
    world.pump().await;
    let other_doc =
        world.orders.handle(apigw_request("GET", &format!("/user/orders/{other}/metalink/download"), "", None, BOB)).await.unwrap();
    let other_token = match other_doc.body() {
        lambda_http::Body::Text(t) => t.split("orderToken=").nth(1).unwrap().split('<').next().unwrap().to_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(public(path, &format!("orderToken={other_token}"), "GET").await, 404);
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"orderId": id, "sub": "ann@example.org", "exp": 1_000_000_000}),
        &jsonwebtoken::EncodingKey::from_secret(b"order-token-secret-of-these-tests-0123456789"),
    )
    .unwrap();
    assert_eq!(public(path, &format!("orderToken={expired}"), "GET").await, 401);
    assert_eq!(public(path, query, "GET").await, 302, "the public link downloads");

    // The service's file is read where the service says; stored ones through a signed URL.
    assert_eq!(world.download_all(&id, ANN).await.len(), 3, "one was downloaded through its public link");
    assert_eq!(states(&world.get(&id, ANN).await), [(5 * KIB, "FINISHED".to_owned())]);
}

#[tokio::test]
async fn files_past_the_quota_end_in_error_and_an_order_with_none_left_fails() {
    let mut config = Config::defaults();
    config.default_quota = granary_domain::order::Quota { max_files: 3, max_bytes: -1, period_hours: 24 };
    let world = World::new(config).await;
    let mut products = Vec::new();
    for i in 0..5 {
        products.push(world.stored_product(&format!("q{i}"), KIB, "online").await);
    }
    let id = world.order(ANN, products).await;
    world.pump().await;
    let order = world.get(&id, ANN).await;
    assert_eq!(order["status"], "DONE_WITH_WARNING", "{order}");
    assert_eq!((order["availableFilesCount"].as_u64(), order["filesInErrorCount"].as_u64()), (Some(3), Some(2)));
    let errors: Vec<Item> = world.files(&id).await.into_iter().filter(|f| f.get_str("state") == Some("ERROR")).collect();
    assert!(errors.iter().all(|f| f.get_str("cause") == Some("quota exceeded")));

    // The quota is spent for this period: the next order gets nothing, and fails.
    let second = world.order(ANN, vec![world.stored_product("q9", KIB, "online").await]).await;
    world.pump().await;
    assert_eq!(world.get(&second, ANN).await["status"], "FAILED");
    let events = world.site.drain("order-events").await;
    assert!(events.iter().any(|m| m.body.contains("\"FAILED\"") && m.body.contains(&second)));
    // No metalink for a failed order.
    assert_eq!(world.call("GET", &format!("/user/orders/{second}/metalink/download"), None, ANN).await.0, 404);
    // Another user's quota is their own.
    let bobs = world.order(BOB, vec![world.stored_product("b9", KIB, "online").await]).await;
    world.pump().await;
    assert_eq!(world.get(&bobs, BOB).await["status"], "DONE");
    // The next period has room again.
    world.site.clock.advance(chrono::Duration::hours(24));
    let third = world.order(ANN, vec![world.stored_product("q8", KIB, "online").await]).await;
    world.pump().await;
    assert_eq!(world.get(&third, ANN).await["status"], "DONE");
    // Retried in the new period, the first order's files past the quota come through.
    assert_eq!(world.call("PUT", &format!("/user/orders/{third}/retry"), None, ANN).await.0, 409, "nothing failed");
    let (status, retried) = world.call("PUT", &format!("/user/orders/{id}/retry"), None, ANN).await;
    assert_eq!((status, retried["status"].as_str()), (200, Some("RUNNING")), "{retried}");
    world.pump().await;
    let order = world.get(&id, ANN).await;
    assert_eq!(
        (order["status"].as_str(), order["availableFilesCount"].as_u64(), order["filesInErrorCount"].as_u64()),
        (Some("DONE"), Some(5), Some(0)),
        "{order}"
    );
}

#[tokio::test]
async fn twenty_dispatchers_at_once_never_pass_the_pool_or_a_users_limit() {
    let mut config = Config::defaults();
    config.order_settings.suborder_max_bytes = KIB;
    config.dispatch_limits.pool = 5;
    config.dispatch_limits.per_user = 2;
    let world = World::new(config).await;
    let users: [Caller; 3] = [ANN, BOB, Some(("cy@example.org", &["s2"]))];
    for (u, caller) in users.iter().enumerate() {
        let mut products = Vec::new();
        for i in 0..4 {
            products.push(world.stored_product(&format!("u{u}p{i}"), KIB, "online").await);
        }
        world.order(*caller, products).await;
    }
    // Expand only; the nudges are dropped so that the dispatchers below race for every slot.
    for m in world.site.drain("order-create").await {
        world.create.handle(LambdaEvent::new(sqs_event("order-create", &[m]).unwrap(), Context::default())).await.unwrap();
    }
    world.site.drain("suborder-dispatch").await;
    let racers: Vec<_> = (0..20)
        .map(|_| {
            let d = world.dispatch.clone();
            tokio::spawn(async move { d.dispatch().await.unwrap().started })
        })
        .collect();
    let mut started = 0;
    for r in racers {
        started += r.await.unwrap();
    }
    assert_eq!(started, 5, "the pool's five slots, taken once each");
    let fulfilment = Fulfilment::new("orders", "requests", "suborder-dispatch", "order-events");
    assert_eq!(fulfilment.pool_running(&world.site.backend).await.unwrap(), 5);
    let (running, _) = fulfilment.in_state(&world.site.backend, granary_domain::dispatch::SuborderState::Running, None, 100).await.unwrap();
    assert_eq!(running.len(), 5);
    for user in ["ann@example.org", "bob@example.org", "cy@example.org"] {
        let mine = running.iter().filter(|s| s.get_str("slotOwner") == Some(user)).count() as i64;
        assert!(mine <= 2, "{user} runs {mine}");
        assert_eq!(fulfilment.user_slots(&world.site.backend, user).await.unwrap(), mine);
    }
    // Five storage jobs were staged, one per start.
    assert_eq!(world.site.drain("suborder-dispatch").await.len(), 5);
}

#[tokio::test]
async fn pause_resume_delete_remove_and_restart_follow_regards_rules() {
    const ADMIN: Caller = Some(("root@example.org", &["admin"]));
    let mut config = Config::defaults();
    config.order_settings.suborder_max_bytes = KIB;
    config.dispatch_limits.per_user = 1;
    config.default_quota = granary_domain::order::Quota { max_files: 100, max_bytes: -1, period_hours: 24 };
    let world = World::new(config).await;
    let mut products = Vec::new();
    for i in 0..3 {
        products.push(world.stored_product(&format!("l{i}"), 10 * KIB, "online").await);
    }
    let id = world.order(ANN, products).await;
    world.pump().await;
    let count = |order: &Value, state: &str| states(order).iter().filter(|(_, s)| s == state).count();
    let order = world.get(&id, ANN).await;
    assert_eq!((count(&order, "DONE"), count(&order, "WAITING")), (1, 2), "Y = 1");

    // Paused: a download frees the slot, but nothing starts until it is resumed.
    let (status, paused) = world.call("PUT", &format!("/user/orders/pause/{id}"), None, ANN).await;
    assert_eq!((status, paused["status"].as_str()), (200, Some("PAUSED")), "{paused}");
    let (status, problem) = world.call("PUT", &format!("/user/orders/pause/{id}"), None, ANN).await;
    assert_eq!(status, 409);
    assert!(problem["detail"].as_str().unwrap().contains("ORDER_MUST_BE_PENDING_OR_RUNNING"), "{problem}");
    assert_eq!(world.call("PUT", &format!("/user/orders/pause/{id}"), None, BOB).await.0, 404, "another user's order");
    assert_eq!(world.download_all(&id, ANN).await.len(), 1);
    world.pump().await;
    let order = world.get(&id, ANN).await;
    assert_eq!((count(&order, "FINISHED"), count(&order, "WAITING")), (1, 2), "{order}");
    let (status, resumed) = world.call("PUT", &format!("/user/orders/resume/{id}"), None, ANN).await;
    assert_eq!((status, resumed["status"].as_str()), (200, Some("RUNNING")));
    world.pump().await;
    let order = world.get(&id, ANN).await;
    assert_eq!((count(&order, "DONE"), count(&order, "WAITING")), (1, 1), "the next one started: {order}");

    // Deleting needs it paused or over; deleted, its slots and quota come back, its hold on the
    // stored objects is dropped, and its files are gone for the user.
    assert_eq!(world.call("DELETE", &format!("/user/orders/{id}"), None, ANN).await.0, 409);
    world.call("PUT", &format!("/user/orders/pause/{id}"), None, ANN).await;
    let (status, deleted) = world.call("DELETE", &format!("/user/orders/{id}"), None, ANN).await;
    assert_eq!((status, deleted["status"].as_str()), (200, Some("DELETED")));
    world.pump().await;
    let fulfilment = Fulfilment::new("orders", "requests", "suborder-dispatch", "order-events");
    assert_eq!(fulfilment.user_slots(&world.site.backend, "ann@example.org").await.unwrap(), 0);
    assert_eq!(fulfilment.pool_running(&world.site.backend).await.unwrap(), 0);
    let window = granary_domain::dispatch::quota_window(world.site.backend.clock.now_ms(), 24);
    let used = world.site.backend.table.get("orders", &Key::new("QU#ann@example.org", window.to_string())).await.unwrap().unwrap();
    assert_eq!(used.get_i64("files"), Some(1), "only the downloaded file still counts");
    // The window's counter goes with the table's TTL a day after the window ends.
    assert_eq!(used.get_i64("purgeAt"), Some(granary_domain::dispatch::quota_window_purge_at(window, 24)));
    let jobs: Vec<Value> = world.site.drain("storage-jobs").await.iter().map(|m| serde_json::from_str(&m.body).unwrap()).collect();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["owner"], format!("order:{id}"));
    assert_eq!(jobs[0]["objects"].as_array().unwrap().len(), 3);
    assert_eq!(world.call("GET", &format!("/user/orders/{id}/metalink/download"), None, ANN).await.0, 404);
    assert_eq!(world.call("GET", &format!("/orders/{id}/files/available"), None, ANN).await.1["content"], json!([]));
    let links: Vec<String> =
        world.get(&id, ANN).await["links"].as_array().unwrap().iter().map(|l| l["rel"].as_str().unwrap().to_owned()).collect();
    assert!(links.is_empty(), "{links:?}");

    // Only admins remove, and only a deleted order.
    let (status, problem) = world.call("DELETE", &format!("/user/orders/remove/{id}"), None, ANN).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(world.call("DELETE", &format!("/user/orders/remove/{id}"), None, ADMIN).await.0, 204);
    world.pump().await;
    assert_eq!(world.call("GET", &format!("/user/orders/{id}"), None, ADMIN).await.0, 404);
    assert!(OrderStore::new("orders", "requests").suborders(&world.site.backend, &id).await.unwrap().is_empty());
    assert!(world.files(&id).await.is_empty());

    // A done order restarts as a new one with the same basket.
    let bobs = world.order(BOB, vec![world.stored_product("r0", 10 * KIB, "online").await]).await;
    world.pump().await;
    assert_eq!(world.get(&bobs, BOB).await["status"], "DONE");
    let (status, again) = world.call("POST", &format!("/user/orders/{bobs}/restart"), Some(r#"{"label": "again"}"#), BOB).await;
    assert_eq!((status, again["status"].as_str()), (201, Some("PENDING")), "{again}");
    assert_eq!(world.call("POST", &format!("/user/orders/{bobs}/restart"), Some(r#"{"label": "again"}"#), BOB).await.0, 409, "label taken");
    world.pump().await;
    let again_id = again["id"].as_str().unwrap().to_owned();
    // Bob's one slot (Y = 1) is held by his first order's file until he downloads it.
    assert_eq!(states(&world.get(&again_id, BOB).await)[0].1, "WAITING");
    world.download_all(&bobs, BOB).await;
    world.pump().await;
    let again = world.get(&again_id, BOB).await;
    assert_eq!((again["status"].as_str(), again["filesCount"].as_u64()), (Some("DONE"), Some(1)));
}

#[tokio::test]
async fn maintenance_times_out_silent_storage_reminds_and_expires() {
    let mut config = Config::defaults();
    config.suborder_timeout_hours = 2;
    let world = World::new(config).await;
    let maintenance = order_maintenance::OrderMaintenance::new(world.site.backend.clone(), world.site.config.clone());
    let tape = world.order(ANN, vec![world.stored_product("silent", KIB, "tape").await]).await;
    let online = world.order(BOB, vec![world.stored_product("ready", KIB, "online").await]).await;
    world.pump().await;
    world.site.drain("files-restoration").await;
    assert_eq!(maintenance.run().await.unwrap(), order_maintenance::Maintained::default());

    // The service never answers: past the timeout its file fails, and the order with it.
    world.site.clock.advance(chrono::Duration::hours(3));
    let done = maintenance.run().await.unwrap();
    assert_eq!(done.timed_out, 1);
    world.pump().await;
    let order = world.get(&tape, ANN).await;
    assert_eq!(order["status"], "FAILED", "{order}");
    let failed = world.files(&tape).await;
    assert!(failed[0].get_str("cause").unwrap().contains("storage did not answer within 2 hours"));

    // Bob's file waits for him: one reminder after 72 hours, not one per run.
    world.site.drain("order-events").await;
    world.site.clock.advance(chrono::Duration::hours(72));
    assert_eq!(maintenance.run().await.unwrap().reminded, 1);
    assert_eq!(maintenance.run().await.unwrap().reminded, 0);
    let reminders: Vec<Value> = world.site.drain("order-events").await.iter().map(|m| serde_json::from_str(&m.body).unwrap()).collect();
    assert_eq!(reminders.len(), 1);
    assert_eq!((reminders[0]["status"].as_str(), reminders[0]["orderId"].as_str()), (Some("REMINDER"), Some(online.as_str())));

    // Past its expiration date (168 hours at most) the order expires and is released.
    world.site.clock.advance(chrono::Duration::hours(100));
    assert_eq!(maintenance.run().await.unwrap().expired, 2);
    world.pump().await;
    let expired = world.get(&online, BOB).await;
    assert_eq!((expired["status"].as_str(), expired["availableFilesCount"].as_u64()), (Some("EXPIRED"), Some(0)));
    assert_eq!(world.call("GET", &format!("/orders/files/{online}.1.0"), None, BOB).await.0, 404);
    assert_eq!(maintenance.run().await.unwrap().expired, 0, "expired once");
    let fulfilment = Fulfilment::new("orders", "requests", "suborder-dispatch", "order-events");
    assert_eq!(fulfilment.user_slots(&world.site.backend, "bob@example.org").await.unwrap(), 0);
}

#[tokio::test]
async fn behind_api_gateway_the_zip_is_built_by_a_worker_then_redirected_to_once() {
    let world = World::new(Config::defaults()).await;
    let id = world.order(ANN, vec![world.stored_product("z0", KIB, "online").await, world.stored_product("z1", KIB, "online").await]).await;
    world.pump().await;
    assert_eq!(world.get(&id, ANN).await["status"], "DONE");
    let path = format!("/user/orders/{id}/download");
    assert_eq!(world.call("GET", &path, None, BOB).await.0, 404);
    assert_eq!(world.call("GET", &path, None, ANN).await.0, 202, "the build starts");
    assert_eq!(world.call("GET", &path, None, ANN).await.0, 202, "and is under way");
    world.pump().await;
    let zips = granary_stores::zips::ZipStore::new("orders");
    let granary_stores::zips::ZipState::Ready(_, key) = zips.state(&world.site.backend, &id).await.unwrap() else { panic!("no zip built") };
    let response = world.orders.handle(apigw_request("GET", &path, "", None, ANN)).await.unwrap();
    assert_eq!(response.status(), 302);
    assert!(response.headers()["location"].to_str().unwrap().contains("signature="));
    let (_, mut reader) = world.site.backend.blobs.get("order-staging", &key).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes).await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = (0..archive.len()).map(|i| archive.by_index(i).unwrap().name().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["NOTICE.txt", "z0/z0.dat", "z1/z1.dat"]);
    let mut content = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("z0/z0.dat").unwrap(), &mut content).unwrap();
    assert_eq!(content, "content of z0");
    assert_eq!(world.get(&id, ANN).await["availableFilesCount"], 0, "its files are downloaded");
    // Handed out once: the next request builds a zip of what is available then, here nothing.
    assert_eq!(world.call("GET", &path, None, ANN).await.0, 202);
    world.pump().await;
    let response = world.orders.handle(apigw_request("GET", &path, "", None, ANN)).await.unwrap();
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn a_selection_with_the_built_in_processing_gets_one_zip_per_suborder_with_a_manifest() {
    let world = World::new(Config::defaults()).await;
    let products = vec![
        world.stored_product("pk0", KIB, "online").await,
        world.stored_product("pk1", KIB, "online").await,
        world.stored_product("pk2", KIB, "online").await,
    ];
    world.site.create(&products).await;
    let body = json!({"entityIdsToInclude": ["pk0", "pk1", "pk2"]}).to_string();
    let (_, basket) = answer(world.basket.handle(apigw_request("POST", "/order/basket/selection", "", Some(&body), ANN)).await.unwrap());
    let selection = basket["datasetSelections"][0]["id"].as_u64().unwrap();
    let path = format!("/order/basket/dataset/{selection}/updateProcessing");
    let (status, _) =
        answer(world.basket.handle(apigw_request("PUT", &path, "", Some(r#"{"processBusinessId": "granary-pack"}"#), ANN)).await.unwrap());
    assert_eq!(status, 200);
    let (status, order) = world.call("POST", "/user/orders", Some(r#"{"label": "packed"}"#), ANN).await;
    assert_eq!(status, 201);
    let id = order["id"].as_str().unwrap().to_owned();
    world.pump().await;
    let order = world.get(&id, ANN).await;
    assert_eq!((order["status"].as_str(), order["filesCount"].as_u64()), (Some("DONE"), Some(1)), "{order}");
    assert_eq!(order["availableFilesCount"], 1);
    assert_eq!(world.call("PUT", &format!("/user/orders/{id}/retry"), None, ANN).await.0, 409, "no retry with processing");
    let files = world.files(&id).await;
    assert_eq!(files.len(), 1, "the inputs are replaced by the output");
    let file = files[0].get("file").unwrap().clone();
    assert_eq!(file["storage"], "granary-processed");
    let key = file["url"].as_str().unwrap().trim_start_matches("s3://order-staging/").to_owned();
    let (_, mut reader) = world.site.backend.blobs.get("order-staging", &key).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes).await.unwrap();
    use md5::Digest;
    assert_eq!(hex::encode(md5::Md5::digest(&bytes)), file["checksum"].as_str().unwrap(), "the checksum is the zip's");
    assert_eq!(file["size"].as_u64(), Some(bytes.len() as u64));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = (0..archive.len()).map(|i| archive.by_index(i).unwrap().name().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["MANIFEST.txt", "NOTICE.txt", "pk0/pk0.dat", "pk1/pk1.dat", "pk2/pk2.dat"]);
    let mut manifest = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("MANIFEST.txt").unwrap(), &mut manifest).unwrap();
    assert_eq!(manifest.lines().count(), 3);
    assert!(manifest.contains("pk1/pk1.dat\t1024\tMD5:"), "{manifest}");
    // Downloaded, the suborder finishes.
    assert_eq!(world.download_all(&id, ANN).await.len(), 1);
    assert_eq!(states(&world.get(&id, ANN).await)[0].1, "FINISHED");
}

/// Orders `products` (created first) with processing `description` on their dataset selection.
async fn order_processed(world: &World, products: &[Value], description: Value) -> String {
    world.site.create(products).await;
    let ids: Vec<&str> = products.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let body = json!({"entityIdsToInclude": ids}).to_string();
    let (_, basket) = answer(world.basket.handle(apigw_request("POST", "/order/basket/selection", "", Some(&body), ANN)).await.unwrap());
    let selection = basket["datasetSelections"][0]["id"].as_u64().unwrap();
    let path = format!("/order/basket/dataset/{selection}/updateProcessing");
    let (status, _) = answer(world.basket.handle(apigw_request("PUT", &path, "", Some(&description.to_string()), ANN)).await.unwrap());
    assert_eq!(status, 200);
    let label = json!({"label": format!("processed {}", uuid_like())}).to_string();
    let (status, order) = world.call("POST", "/user/orders", Some(&label), ANN).await;
    assert_eq!(status, 201, "{order}");
    order["id"].as_str().unwrap().to_owned()
}

async fn read_blob(world: &World, url: &str) -> Vec<u8> {
    let key = url.trim_start_matches("s3://order-staging/");
    let (_, mut reader) = world.site.backend.blobs.get("order-staging", key).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes).await.unwrap();
    bytes
}

#[tokio::test]
async fn a_configured_command_processes_each_feature_and_its_outputs_replace_the_files() {
    let log = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/checksums.py");
    let mut config = Config::defaults();
    config.processes = granary_domain::processing::parse_processes(
        &json!({"checksums": {"command": ["python3", script], "scope": "FEATURE", "timeoutSecs": 60}}).to_string(),
    );
    let world = World::new(config).await;
    let products = vec![
        world.stored_product("cm0", KIB, "online").await,
        world.stored_product("cm1", KIB, "online").await,
        world.stored_product("bad2", KIB, "online").await,
    ];
    let parameters = json!({"log": log.path().display().to_string(), "band": "B04"});
    let id = order_processed(&world, &products, json!({"processBusinessId": "checksums", "parameters": parameters})).await;
    world.pump().await;
    let order = world.get(&id, ANN).await;
    assert_eq!(order["status"], "DONE_WITH_WARNING", "one feature's processing failed: {order}");
    let runs = std::fs::read_to_string(log.path().join("runs.log")).unwrap();
    assert_eq!(runs.lines().count(), 3, "one run per feature: {runs}");

    let files = world.files(&id).await;
    let mut outputs = BTreeMap::new();
    for f in &files {
        let file = f.get("file").unwrap();
        match f.get_str("state").unwrap() {
            "AVAILABLE" => {
                assert_eq!(file["storage"], "granary-processed");
                let bytes = read_blob(&world, file["url"].as_str().unwrap()).await;
                use md5::Digest;
                assert_eq!(hex::encode(md5::Md5::digest(&bytes)), file["checksum"].as_str().unwrap());
                assert_eq!(file["size"].as_u64(), Some(bytes.len() as u64));
                outputs.insert(file["filename"].as_str().unwrap().to_owned(), (f.get_str("providerId").unwrap().to_owned(), bytes));
            }
            "ERROR" => {
                assert_eq!(f.get_str("providerId"), Some("bad2"));
                let cause = f.get_str("cause").unwrap();
                assert!(
                    cause.contains("processing checksums failed") && cause.contains("cannot process bad2: its pixels are all clouds"),
                    "{cause}"
                );
            }
            other => panic!("a file {other}: {f:?}"),
        }
    }
    assert_eq!(outputs.keys().collect::<Vec<_>>(), ["cm0.json", "cm0.sha256", "cm1.json", "cm1.sha256"], "the inputs are replaced");
    assert_eq!(outputs["cm1.sha256"].0, "cm1", "an output belongs to its feature");
    use sha2::Digest;
    let expected = format!("{}  cm1.dat\n", hex::encode(sha2::Sha256::digest(b"content of cm1")));
    assert_eq!(String::from_utf8_lossy(&outputs["cm1.sha256"].1), expected, "the command read the stored file");
    let summary: Value = serde_json::from_slice(&outputs["cm0.json"].1).unwrap();
    assert_eq!(summary["parameters"]["band"], "B04", "the selection's parameters reach the process");
    assert_eq!((order["filesCount"].as_u64(), order["availableFilesCount"].as_u64()), (Some(5), Some(4)), "{order}");

    // A redelivered processing job runs nothing again.
    let number = files[0].get_i64("suborder").unwrap();
    let again = json!({"process": {"orderId": id, "suborder": number}}).to_string();
    world.site.backend.queue.send_batch("suborder-dispatch", vec![OutgoingMessage::new(again)]).await.unwrap();
    world.pump().await;
    assert_eq!(std::fs::read_to_string(log.path().join("runs.log")).unwrap().lines().count(), 3);
    assert_eq!(world.files(&id).await.len(), files.len());
    // The outputs download like any file; then the suborder finishes.
    assert_eq!(world.download_all(&id, ANN).await.len(), 4);
    assert_eq!(states(&world.get(&id, ANN).await)[0].1, "FINISHED");
}

/// A processing Lambda function as the port sees it: it reads the request, writes one output per
/// input under the prefix it is given, and answers their keys; `answer` overrides its answer.
#[derive(Debug)]
struct Thumbnailer {
    backend: granary_ports::Backend,
    answer: Option<Value>,
    calls: std::sync::Mutex<Vec<Value>>,
}

#[async_trait::async_trait]
impl granary_ports::Functions for Thumbnailer {
    async fn invoke(&self, function: &str, payload: &[u8]) -> granary_ports::PortResult<Vec<u8>> {
        let request: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(function, "arn:aws:lambda:eu-west-1:123456789012:function:thumbs");
        self.calls.lock().unwrap().push(request.clone());
        if let Some(answer) = &self.answer {
            return Ok(answer.to_string().into_bytes());
        }
        let (bucket, prefix) = (request["outputBucket"].as_str().unwrap(), request["outputPrefix"].as_str().unwrap());
        let mut outputs = Vec::new();
        for input in request["inputs"].as_array().unwrap() {
            assert!(input["url"].as_str().unwrap().contains("signature="), "inputs come as signed URLs: {input}");
            let key = format!("{prefix}{}.png", input["providerId"].as_str().unwrap());
            let body: granary_ports::BlobReader = Box::pin(std::io::Cursor::new(format!("thumb of {}", input["filename"]).into_bytes()));
            self.backend.blobs.put(bucket, &key, body, StorageClass::Online).await?;
            outputs.push(json!({"key": key}));
        }
        Ok(json!({"outputs": outputs}).to_string().into_bytes())
    }
}

#[tokio::test]
async fn a_configured_lambda_processes_a_suborder_and_a_broken_answer_fails_its_files() {
    let mut config = Config::defaults();
    config.processes = granary_domain::processing::parse_processes(
        r#"{"thumbs": {"lambda": "arn:aws:lambda:eu-west-1:123456789012:function:thumbs", "scope": "SUBORDER"}}"#,
    );
    for (answer, ok) in
        [(None, true), (Some(json!({"outputs": [{"key": "elsewhere/x.png"}]})), false), (Some(json!({"error": "out of memory"})), false)]
    {
        let mut world = World::new(config.clone()).await;
        let thumbnailer = Arc::new(Thumbnailer { backend: world.site.backend.clone(), answer: answer.clone(), calls: Default::default() });
        world.dispatch =
            Arc::new(SuborderDispatch::new(world.site.backend.clone(), world.site.config.clone()).with_functions(thumbnailer.clone()));
        let n = uuid_like();
        let products = vec![
            world.stored_product(&format!("lt{n}a"), KIB, "online").await,
            world.stored_product(&format!("lt{n}b"), KIB, "online").await,
        ];
        let id = order_processed(&world, &products, json!({"processBusinessId": "thumbs"})).await;
        world.pump().await;
        let calls = thumbnailer.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "one run for the suborder");
        assert_eq!((calls[0]["scope"].as_str(), calls[0]["inputs"].as_array().unwrap().len()), (Some("SUBORDER"), 2));
        let order = world.get(&id, ANN).await;
        let files = world.files(&id).await;
        if ok {
            assert_eq!(order["status"], "DONE", "{order}");
            let mut names: Vec<&str> = files.iter().map(|f| f.get("file").unwrap()["filename"].as_str().unwrap()).collect();
            names.sort_unstable();
            assert_eq!(names, [format!("lt{n}a.png"), format!("lt{n}b.png")]);
            assert!(files.iter().all(|f| f.get("file").unwrap()["mimeType"] == "image/png"));
            let a = files.iter().find(|f| f.get("file").unwrap()["filename"] == format!("lt{n}a.png")).unwrap();
            let bytes = read_blob(&world, a.get("file").unwrap()["url"].as_str().unwrap()).await;
            assert_eq!(bytes, format!("thumb of \"lt{n}a.dat\"").into_bytes());
        } else {
            assert_eq!(order["status"], "FAILED", "{order}");
            let expected = if answer.as_ref().unwrap().get("error").is_some() { "out of memory" } else { "is not under" };
            assert!(
                files.iter().all(|f| f.get_str("state") == Some("ERROR") && f.get_str("cause").unwrap().contains(expected)),
                "{files:?}"
            );
        }
    }
}

#[tokio::test]
async fn without_a_lambda_client_a_lambda_processing_fails_its_files_with_the_reason() {
    let mut config = Config::defaults();
    config.processes = granary_domain::processing::parse_processes(r#"{"thumbs": {"lambda": "thumbs"}}"#);
    let world = World::new(config).await;
    let id = order_processed(&world, &[world.stored_product("nl0", KIB, "online").await], json!({"processBusinessId": "thumbs"})).await;
    world.pump().await;
    assert_eq!(world.get(&id, ANN).await["status"], "FAILED");
    let cause = world.files(&id).await[0].get_str("cause").unwrap().to_owned();
    assert!(cause.contains("configure the process as a command"), "{cause}");
}

#[tokio::test]
async fn a_command_past_its_timeout_fails_its_files_and_is_killed_with_what_it_started() {
    let log = tempfile::tempdir().unwrap();
    // It starts a child that would outlive it, notes the child's pid, then hangs.
    let script = "import json, os, subprocess, sys, time\n\
                  p = json.load(sys.stdin)['parameters']\n\
                  child = subprocess.Popen(['sleep', '120'])\n\
                  open(os.path.join(p['log'], 'child.pid'), 'w').write(str(child.pid))\n\
                  time.sleep(120)\n";
    let mut config = Config::defaults();
    config.processes =
        granary_domain::processing::parse_processes(&json!({"hang": {"command": ["python3", "-c", script], "timeoutSecs": 2}}).to_string());
    let world = World::new(config).await;
    let parameters = json!({"log": log.path().display().to_string()});
    let products = [world.stored_product("hg0", KIB, "online").await];
    let id = order_processed(&world, &products, json!({"processBusinessId": "hang", "parameters": parameters})).await;
    world.pump().await;
    assert_eq!(world.get(&id, ANN).await["status"], "FAILED");
    let cause = world.files(&id).await[0].get_str("cause").unwrap().to_owned();
    assert!(cause.contains("processing hang failed: it took longer than 2 s"), "{cause}");
    let pid = std::fs::read_to_string(log.path().join("child.pid")).unwrap();
    // Killed with its group: gone, or a zombie waiting for init to reap it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z')) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the command's child {pid} outlived it: {stat}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn maintenance_ends_a_processing_whose_job_was_lost() {
    let mut config = Config::defaults();
    config.suborder_timeout_hours = 2;
    config.processes = granary_domain::processing::parse_processes(r#"{"slow": {"command": ["true"]}}"#);
    let world = World::new(config).await;
    let maintenance = order_maintenance::OrderMaintenance::new(world.site.backend.clone(), world.site.config.clone());
    let id = order_processed(&world, &[world.stored_product("lost0", KIB, "online").await], json!({"processBusinessId": "slow"})).await;
    // The processing job is lost (as one dead-lettered after every delivery failed).
    let mut lost = 0;
    for _ in 0..20 {
        for m in world.site.drain("order-create").await {
            world.create.handle(LambdaEvent::new(sqs_event("order-create", &[m]).unwrap(), Context::default())).await.unwrap();
        }
        let messages: Vec<_> = world.site.drain("suborder-dispatch").await;
        if messages.is_empty() {
            break;
        }
        for m in messages {
            if m.body.contains("\"process\"") {
                lost += 1;
                continue;
            }
            world.dispatch.handle(LambdaEvent::new(sqs_event("suborder-dispatch", &[m]).unwrap(), Context::default())).await.unwrap();
        }
    }
    assert_eq!(lost, 1);
    assert_eq!(world.get(&id, ANN).await["status"], "RUNNING", "stuck behind its processing");
    assert_eq!(maintenance.run().await.unwrap(), order_maintenance::Maintained::default());
    world.site.clock.advance(chrono::Duration::hours(3));
    maintenance.run().await.unwrap();
    world.pump().await;
    let order = world.get(&id, ANN).await;
    assert_eq!(
        (order["status"].as_str(), order["availableFilesCount"].as_u64()),
        (Some("DONE"), Some(1)),
        "files left as they are: {order}"
    );
}
