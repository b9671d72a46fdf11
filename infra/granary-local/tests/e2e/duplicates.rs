//! Duplicate delivery: one mixed workload (ingest with stored files, a patch, a deletion, a manual
//! notification, a queue recipient, an order dispatched and downloaded) run on a fresh granary-local,
//! then again with every SQS batch delivered twice at once to two concurrent invocations
//! (`GRANARY_LOCAL_DUPLICATE_DELIVERY=1`). The final states must be the same.

use super::*;

/// What a run ends with, without what differs by nature between runs (generated ids, dates).
/// Also returns how many invocations the runner made (the twins included), from its log.
async fn workload(duplicates: bool) -> (Value, usize) {
    use md5::{Digest, Md5};
    let dir = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let roots = sources.path().to_str().unwrap().to_owned();
    let template_path = with_mirror_queue(scratch.path().join("template.yaml"));
    let mut env = vec![
        ("GRANARY_LOCAL_TEMPLATE", template_path.to_str().unwrap().to_owned()),
        ("GRANARY_STORAGE_FILE_ROOTS", roots),
        ("GRANARY_MODEL_CACHE_SECS", "0".to_owned()),
    ];
    if duplicates {
        env.push(("GRANARY_LOCAL_DUPLICATE_DELIVERY", "1".to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = Runner::start(dir.path(), &env);
    let c = client();
    let (admin, ann) = ordering_with_a_mirror(&c, &r, dir.path()).await;

    // Ingest: a dataset and six products whose files are stored online.
    let product = |i: u32| {
        let content: Vec<u8> = (0..20_000u32).map(|b| ((b * 3 + i) % 251) as u8).collect();
        let path = sources.path().join(format!("d-{i}.bin"));
        std::fs::write(&path, &content).unwrap();
        json!({"type": "Feature", "id": format!("d-{i}"), "entityType": "DATA", "model": "P", "tags": ["S2"], "geometry": null,
               "properties": {"n": i}, "files": [{"locations": [{"url": url::Url::from_file_path(&path).unwrap().to_string()}],
               "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream", "filename": format!("d-{i}.bin"),
                              "filesize": content.len(), "algorithm": "MD5", "checksum": hex::encode(Md5::digest(&content))}}]})
    };
    let dataset = json!({"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
                         "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}});
    let mut features = vec![dataset];
    features.extend((0..6).map(product));
    let body =
        json!({"metadata": {"sessionOwner": "dup", "session": "s1", "storages": [{"pluginBusinessId": "online"}]}, "features": features});
    let wait_all = |info: Value| {
        let (c, admin) = (c.clone(), admin.clone());
        let urls: Vec<String> = info["granted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| r.url(&format!("/features/requests/{}", g["requestId"].as_str().unwrap())))
            .collect();
        async move {
            for url in urls {
                wait_for("the request to end", Duration::from_secs(60), || async {
                    let v: Value = c.get(&url).bearer_auth(&admin).send().await.ok()?.json().await.ok()?;
                    ["SUCCESS", "ERROR", "DENIED"].contains(&v["state"].as_str()?).then_some(v)
                })
                .await;
            }
        }
    };
    let submit = |method: reqwest::Method, path: &str, body: Value| {
        let req = c.request(method, r.url(path)).bearer_auth(&admin).json(&body);
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 202);
            res.json::<Value>().await.unwrap()
        }
    };
    wait_all(submit(reqwest::Method::POST, "/features", body).await).await;
    let urn = |id: &str, v: u32| format!("URN:FEATURE:DATA:granary:{}:V{v}", granary_domain::entity_uuid(id));
    // A patch, a deletion, a manual notification, a second version.
    let patch = json!({"metadata": {"sessionOwner": "dup", "session": "s1"}, "features": [{"type": "Feature", "urn": urn("d-0", 1), "properties": {"n": 100}}]});
    wait_all(submit(reqwest::Method::PATCH, "/features", patch).await).await;
    wait_all(submit(reqwest::Method::DELETE, "/features", json!({"featuresUrns": [urn("d-5", 1)]})).await).await;
    wait_all(submit(reqwest::Method::POST, "/features/notifications", json!({"featuresUrns": [urn("d-1", 1)]})).await).await;
    let again = json!({"metadata": {"sessionOwner": "dup", "session": "s2", "storages": [{"pluginBusinessId": "online"}]}, "features": [product(2)]});
    wait_all(submit(reqwest::Method::POST, "/features", again).await).await;

    // An order of four products, downloaded file by file.
    let res = c.post(r.url("/order/basket/selection")).bearer_auth(&ann).json(&json!({"entityIdsToInclude": ["d-1", "d-2", "d-3", "d-4"]}));
    assert_eq!(res.send().await.unwrap().status(), 200);
    let res = c.post(r.url("/user/orders")).bearer_auth(&ann).json(&json!({"label": "dup"})).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let order_id = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let order_url = r.url(&format!("/user/orders/{order_id}"));
    wait_for("the order to be done", Duration::from_secs(60), || async {
        let v: Value = c.get(&order_url).bearer_auth(&ann).send().await.ok()?.json().await.ok()?;
        ["DONE", "DONE_WITH_WARNING", "FAILED"].contains(&v["status"].as_str()?).then_some(v)
    })
    .await;
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let files: Value =
        c.get(r.url(&format!("/orders/{order_id}/files/available"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    for f in files["content"].as_array().unwrap() {
        let res = no_redirect.get(r.url(f["download"].as_str().unwrap())).bearer_auth(&ann).send().await.unwrap();
        assert_eq!(res.status(), 302);
    }
    let finished = wait_for("the suborder to be finished", Duration::from_secs(60), || async {
        let v: Value = c.get(&order_url).bearer_auth(&ann).send().await.ok()?.json().await.ok()?;
        v["suborders"].as_array()?.iter().all(|s| s["state"] == "FINISHED").then_some(v)
    })
    .await;

    // The final state, by names that do not change between runs.
    let mut snapshot = serde_json::Map::new();
    let mut listed: Vec<String> = Vec::new();
    for state in ["GRANTED", "SUCCESS", "ERROR", "DENIED"] {
        let url = r.url(&format!("/features/requests?state={state}&size=1000"));
        let requests: Value = c.get(url).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        let page = requests["content"].as_array().unwrap_or_else(|| panic!("{requests}"));
        listed.extend(page.iter().map(|q| format!("{} {} {} {} {}", q["providerId"], q["type"], q["state"], q["step"], q["urn"])));
    }
    listed.sort();
    snapshot.insert("requests".into(), json!(listed));
    for (id, versions) in [("d-0", 1), ("d-1", 1), ("d-2", 2), ("d-3", 1), ("d-4", 1), ("d-5", 1)] {
        for v in 1..=versions {
            let res = c.get(r.url(&format!("/features/{}", urn(id, v)))).bearer_auth(&admin).send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let info: Vec<String> = body["disseminationInfo"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["label"].as_str().unwrap_or_default().to_owned())
                .collect();
            // Where each file is stored (its source differs: each run has its own temporary directory).
            let locations: Vec<Value> = body["feature"]["files"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|f| f["locations"].as_array().cloned().unwrap_or_default())
                .filter(|l| l.get("storage").is_some())
                .collect();
            snapshot.insert(
                format!("{id} V{v}"),
                json!({"status": status, "last": body["last"], "properties": body["feature"]["properties"], "locations": locations, "disseminated": info}),
            );
        }
    }
    for session in ["s1", "s2"] {
        let counters: Value =
            c.get(r.url(&format!("/features/sessions/dup/{session}"))).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        snapshot.insert(format!("session {session}"), counters);
    }
    let suborders: Vec<Value> = finished["suborders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| json!([s["kind"], s["state"], s["filesCount"], s["downloadedFilesCount"]]))
        .collect();
    snapshot.insert(
        "order".into(),
        json!({"status": finished["status"], "files": finished["filesCount"], "available": finished["availableFilesCount"],
               "errors": finished["filesInErrorCount"], "size": finished["filesSize"], "suborders": suborders}),
    );
    let files: Value =
        c.get(r.url(&format!("/orders/{order_id}/files/available"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    let mut states: Vec<String> =
        files["content"].as_array().unwrap().iter().map(|f| format!("{} {} {}", f["filename"], f["state"], f["size"])).collect();
    states.sort();
    snapshot.insert("files".into(), json!(states));
    snapshot.insert("quota".into(), c.get(r.url("/user/quota")).bearer_auth(&ann).send().await.unwrap().json().await.unwrap());
    // The recipient may get a notification twice (receivers drop repeats by its id); it got each one.
    let resources = granary_local::resources::load(Some(&template_path)).unwrap();
    let backend = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap().backend();
    let mut ids = BTreeSet::new();
    loop {
        let got = backend.queue.receive("mirror", 10, None, Duration::ZERO).await.unwrap();
        if got.is_empty() {
            break;
        }
        backend.queue.delete_batch("mirror", got.iter().map(|m| m.receipt_handle.clone()).collect()).await.unwrap();
        for m in got {
            let v: Value = serde_json::from_str(&m.body).unwrap();
            ids.insert(format!("{} {}", v["payload"]["urn"], v["metadata"]["action"]));
        }
    }
    snapshot.insert("mirror".into(), json!(ids));
    let requests = backend.queue.depth("feature-response").await.unwrap().total() as usize;
    (Value::Object(snapshot), requests)
}

#[tokio::test]
async fn every_message_delivered_twice_gives_the_same_final_state_as_once() {
    let (once, answers_once) = workload(false).await;
    let (twice, answers_twice) = workload(true).await;
    println!("feature request events on the response queue: {answers_once} delivered once, {answers_twice} delivered twice");
    for (key, value) in once.as_object().unwrap() {
        assert_eq!(Some(value), twice.get(key), "{key} differs when every message is delivered twice");
    }
    assert_eq!(once, twice);
    // The snapshot holds what it should: a run with nothing in it would compare equal too.
    assert_eq!(once["order"]["status"], "DONE", "{once}");
    assert_eq!(once["files"].as_array().unwrap().len(), 4, "{once}");
    assert!(once["mirror"].as_array().unwrap().len() >= 9, "{once}");
}
