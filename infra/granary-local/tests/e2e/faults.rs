//! `kill -9` at random points of a mixed workload, ten times in a row, restarting each time on the same
//! data directory: producer messages (creations with stored files, patches and deletions of products
//! still being created), a queue recipient, an order dispatched and downloaded. Afterwards every
//! request is final, no feature has a second version, the order has each file once, no dispatch slot
//! is held, and every dead-letter queue is empty (nothing poisonous was sent).

use super::*;

#[tokio::test]
async fn ten_kill_9_during_a_mixed_workload_leave_nothing_lost_duplicated_or_held() {
    use md5::{Digest, Md5};
    let seed = std::env::var("GRANARY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7));
    println!("kill -9 run, GRANARY_FAULT_SEED={seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // Short visibility timeouts everywhere, so what a killed invocation held comes back within
    // seconds, and a queue for the recipient.
    let template_path = with_mirror_queue(fault_test_template(scratch.path()));
    let roots = sources.path().to_str().unwrap().to_owned();
    let env = [
        ("GRANARY_LOCAL_TEMPLATE", template_path.to_str().unwrap()),
        ("GRANARY_STORAGE_FILE_ROOTS", roots.as_str()),
        ("GRANARY_MODEL_CACHE_SECS", "0"),
        SHORT_ORDER_LEASE,
    ];
    let listen = free_loopback_address();
    let start = || Runner::start_listening(dir.path(), &listen, &[], &env);
    let mut r = start();
    let c = client();
    let (admin, ann) = ordering_with_a_mirror(&c, &r, dir.path()).await;
    let resources = granary_local::resources::load(Some(&template_path)).unwrap();
    let dead_letter_queues: BTreeSet<String> = resources.queues.iter().filter_map(|q| q.dead_letter_queue.clone()).collect();
    let backend = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap().backend();

    // Producer messages in waves, one queued before each kill: 30 products with a stored file each,
    // and a patch and a deletion of products of the wave before (sent once their creations are
    // registered: SQS keeps no order between messages, and a deletion of a feature never seen is
    // ALREADY_DELETED, as in REGARDS; they wait behind creations still storing their files).
    const PER_WAVE: u32 = 30;
    const WAVES: u32 = 10;
    const PRODUCTS: u32 = PER_WAVE * WAVES;
    let message = |kind: &str, id: String, body: Value| {
        OutgoingMessage::new(body.to_string()).attribute("regards.request.type", kind).attribute("regards.request.id", id)
    };
    let meta = json!({"sessionOwner": "faults", "session": "s1", "storages": [{"pluginBusinessId": "online"}]});
    let creation = |i: u32| {
        let content: Vec<u8> = (0..30_000u32).map(|b| ((b * 5 + i) % 251) as u8).collect();
        let path = sources.path().join(format!("k-{i}.bin"));
        std::fs::write(&path, &content).unwrap();
        let feature = json!({"type": "Feature", "id": format!("k-{i}"), "entityType": "DATA", "model": "P", "tags": ["S2"], "geometry": null,
            "properties": {"n": i}, "files": [{"locations": [{"url": url::Url::from_file_path(&path).unwrap().to_string()}],
            "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream", "filename": format!("k-{i}.bin"),
                           "filesize": content.len(), "algorithm": "MD5", "checksum": hex::encode(Md5::digest(&content))}}]});
        message("CREATION", format!("c-{i}"), json!({"metadata": meta, "feature": feature}))
    };
    let urn = |i: u32| format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid(&format!("k-{i}")));
    let patched: BTreeSet<u32> = (0..WAVES - 1).map(|w| w * PER_WAVE).collect();
    let deleted: BTreeSet<u32> = (0..WAVES - 1).map(|w| w * PER_WAVE + 1).collect();
    let dataset = message(
        "CREATION",
        "c-ds".into(),
        json!({"metadata": meta, "feature": {"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
               "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}}}),
    );
    let mut sent = 0;

    // Ten kills at random moments, each followed by a restart; the order is placed (and downloaded)
    // while they go on, retried through the kills.
    let order_url = |id: &str| format!("http://{listen}/user/orders/{id}");
    let mut order: Option<String> = None;
    let ordered = ORDERED.map(|i| format!("k-{i}"));
    let mut downloaded = Downloads::default();
    for kill in 0..WAVES {
        let mut wave: Vec<OutgoingMessage> = (kill * PER_WAVE..(kill + 1) * PER_WAVE).map(creation).collect();
        if kill == 0 {
            wave.insert(0, dataset.clone());
        } else {
            let (p, d) = ((kill - 1) * PER_WAVE, (kill - 1) * PER_WAVE + 1);
            for i in [p, d] {
                let url = r.url(&format!("/features/requests/c-{i}"));
                wait_for("the creation to be registered", Duration::from_secs(30), || async {
                    (c.get(&url).bearer_auth(&admin).send().await.ok()?.status() == 200).then_some(())
                })
                .await;
            }
            let patch = json!({"metadata": {"sessionOwner": "faults", "session": "s1"},
                               "feature": {"type": "Feature", "urn": urn(p), "properties": {"patched": true}}});
            wave.push(message("PATCH", format!("p-{p}"), patch));
            wave.push(message("DELETION", format!("d-{d}"), json!({"urn": urn(d), "priority": "NORMAL"})));
        }
        sent += wave.len();
        for batch in granary_ports::queue::batches(wave) {
            backend.queue.send_batch("feature-normal", batch).await.unwrap();
        }
        let until = Instant::now() + Duration::from_millis(100 + rng.below(400));
        while Instant::now() < until {
            // Placed in the fourth wave, so its creation, dispatch and downloads meet kills.
            if order.is_none() && kill >= 3 {
                order = place_order(&c, &r, &ann, &ordered, "through the kills").await;
            }
            if let Some(id) = &order {
                download_available(&c, &r, &ann, id, &mut downloaded).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r.kill9();
        let answered = backend.queue.depth("feature-response").await.unwrap().total();
        println!("kill {}: {answered} request events so far, order {order:?}, {} files downloaded", kill + 1, downloaded.len());
        r = start();
    }

    // Left alone now: every request ends, the order is placed, done and downloaded.
    let final_states = wait_for("every request to end", Duration::from_secs(90), || async {
        let mut states = HashMap::new();
        for state in ["GRANTED", "SUCCESS", "ERROR", "DENIED"] {
            let url = r.url(&format!("/features/requests?state={state}&size=1000"));
            let page: Value = c.get(url).bearer_auth(&admin).send().await.ok()?.json().await.ok()?;
            states.insert(state, page["content"].as_array()?.len());
        }
        (states["GRANTED"] == 0 && states.values().sum::<usize>() == sent).then_some(states)
    })
    .await;
    assert_eq!(final_states["SUCCESS"], sent, "every request succeeded: {final_states:?}");
    let order = match order {
        Some(id) => id,
        None => {
            wait_for("the order to be placed", Duration::from_secs(30), || place_order(&c, &r, &ann, &ordered, "through the kills")).await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let done: Value = loop {
        download_available(&c, &r, &ann, &order, &mut downloaded).await;
        let v: Value = c.get(order_url(&order)).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
        // Not before order-create has expanded it: an order with no suborder yet is not done.
        if v["suborders"].as_array().is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["state"] == "FINISHED")) {
            break v;
        }
        if Instant::now() > deadline {
            let k5: Value = c.get(r.url(&format!("/features/{}", urn(5)))).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
            let files: Value =
                c.get(r.url(&format!("/orders/{order}/files/available"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
            let p5: Value = c.get(r.url(&format!("/products/{}", urn(5)))).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
            let order_logs = [r.logged("order-create"), r.logged("suborder-dispatch")].concat();
            panic!(
                "the order was not downloaded within 90 s: {v}\nk-5: {k5}\nproduct k-5: {p5}\nfiles: {files}\nrunner's order log lines: {order_logs:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // No duplicate version; the patched ones patched once, the deleted ones gone.
    for i in 0..PRODUCTS {
        let v1 = c.get(r.url(&format!("/features/{}", urn(i)))).bearer_auth(&admin).send().await.unwrap();
        let v2 = c.get(r.url(&format!("/features/{}", urn(i).replace(":V1", ":V2")))).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(v2.status(), 404, "k-{i} has a second version");
        if deleted.contains(&i) {
            if v1.status() != 404 {
                let request = |id: String| {
                    let (c, url, admin) = (c.clone(), r.url(&format!("/features/requests/{id}")), admin.clone());
                    async move { c.get(url).bearer_auth(admin).send().await.unwrap().text().await.unwrap() }
                };
                panic!(
                    "k-{i} was not deleted: {}\ncreation: {}\ndeletion: {}",
                    v1.text().await.unwrap(),
                    request(format!("c-{i}")).await,
                    request(format!("d-{i}")).await
                );
            }
        } else {
            let f: Value = v1.json().await.unwrap();
            assert_eq!(f["feature"]["properties"]["patched"].as_bool(), patched.contains(&i).then_some(true), "k-{i}: {f}");
            let stored = f["feature"]["files"][0]["locations"].as_array().unwrap().iter().filter(|l| l["storage"] == "online").count();
            assert_eq!(stored, 1, "k-{i} stored once: {f}");
        }
    }
    // The order: each of its files once, its suborders finished, no slot held.
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["filesCount"], 4, "{done}");
    let files: Value =
        c.get(r.url(&format!("/orders/{order}/files/available?size=100"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    let names: BTreeSet<String> = files["content"].as_array().unwrap().iter().map(|f| f["filename"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names.len(), 4, "{files}");
    let held = |pk: &str, sk: &str, attr: &str| {
        let backend = backend.clone();
        let (pk, sk, attr) = (pk.to_owned(), sk.to_owned(), attr.to_owned());
        async move { backend.table.get("orders", &Key::new(pk, sk)).await.unwrap().and_then(|i| i.get_i64(&attr)).unwrap_or(0) }
    };
    assert_eq!(held("DISPATCH", "POOL", "running").await, 0, "a dispatch slot of the pool is held");
    assert_eq!(held("U#ann@example.org", "U", "slots").await, 0, "a dispatch slot of Ann's is held");
    // Nothing went to a dead-letter queue.
    for queue in &dead_letter_queues {
        let depth = backend.queue.depth(queue).await.unwrap().total();
        assert_eq!(depth, 0, "{queue} holds {depth} messages");
    }
}

/// The products Ann orders: of the third wave.
const ORDERED: [u32; 4] = [65, 66, 67, 68];
