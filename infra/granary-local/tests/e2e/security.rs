//! One user against another over granary-local's HTTP API: Bob can neither read, change, download
//! nor even learn of Ann's basket, order and files (every answer is the one an unknown id gets), an
//! admin can read them, and the signed links a download redirects to stop working once altered or
//! expired. Tokens (expired, other key, `alg: none`, HS256) are covered by
//! `serves_health_and_jwks_and_refuses_forged_tokens`.

use super::*;

/// An answer reduced to what could tell two resources apart: status and problem title.
async fn shape(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["title"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn users_cannot_reach_or_detect_each_others_orders_and_signed_links_expire() {
    use md5::{Digest, Md5};
    let dir = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let roots = sources.path().to_str().unwrap().to_owned();
    // Download links live 2 s, so their expiry is seen within the test.
    let r = Runner::start(dir.path(), &[("GRANARY_STORAGE_FILE_ROOTS", &roots), ("GRANARY_DOWNLOAD_URL_SECS", "2")]);
    let c = client();
    let admin = token(dir.path(), "root@example.org", &["--admin"]);
    let ann = token(dir.path(), "ann@example.org", &["--groups", "s2"]);
    let bob = token(dir.path(), "bob@example.org", &["--groups", "s2"]);
    define_order_models(&c, &r, &admin).await;
    let content: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let path = sources.path().join("p.bin");
    std::fs::write(&path, &content).unwrap();
    let body = json!({"metadata": {"sessionOwner": "sec", "session": "s", "storages": [{"pluginBusinessId": "online"}]}, "features": [
        {"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
         "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}},
        {"type": "Feature", "id": "p-0", "entityType": "DATA", "model": "P", "tags": ["S2"], "geometry": null, "properties": {},
         "files": [{"locations": [{"url": url::Url::from_file_path(&path).unwrap().to_string()}], "attributes": {"dataType": "RAWDATA",
            "mimeType": "application/octet-stream", "filename": "p.bin", "filesize": content.len(), "algorithm": "MD5",
            "checksum": hex::encode(Md5::digest(&content))}}]}]});
    let info: Value = c.post(r.url("/features")).bearer_auth(&admin).json(&body).send().await.unwrap().json().await.unwrap();
    for g in info["granted"].as_array().unwrap() {
        let url = r.url(&format!("/features/requests/{}", g["requestId"].as_str().unwrap()));
        let done = wait_for("the product to be stored", Duration::from_secs(30), || async {
            let v: Value = c.get(&url).bearer_auth(&admin).send().await.ok()?.json().await.ok()?;
            (v["state"] == "SUCCESS" || v["state"] == "ERROR").then_some(v)
        })
        .await;
        assert_eq!(done["state"], "SUCCESS", "{done}");
    }

    // Ann's basket and order.
    let basket: Value = c
        .post(r.url("/order/basket/selection"))
        .bearer_auth(&ann)
        .json(&json!({"entityIdsToInclude": ["p-0"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let selection = basket["datasetSelections"][0]["id"].as_u64().expect("Ann's selection");
    let res = c.post(r.url("/user/orders")).bearer_auth(&ann).json(&json!({"label": "ann's"})).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let order = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let available_url = r.url(&format!("/orders/{order}/files/available"));
    let files: Value = wait_for("Ann's file to be available", Duration::from_secs(30), || async {
        let v: Value = c.get(&available_url).bearer_auth(&ann).send().await.ok()?.json().await.ok()?;
        (v["content"].as_array()?.len() == 1).then_some(v)
    })
    .await;
    let file = files["content"][0]["id"].as_str().unwrap().to_owned();
    // Ann fills her basket again, so there is a basket of hers to aim at.
    let again = c.post(r.url("/order/basket/selection")).bearer_auth(&ann).json(&json!({"entityIdsToInclude": ["p-0"]})).send().await;
    assert_eq!(again.unwrap().status(), 200);
    let selection_again = {
        let b: Value = c.get(r.url("/order/basket")).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
        b["datasetSelections"][0]["id"].as_u64().unwrap_or(selection)
    };

    // Every route naming Ann's things answers Bob exactly as it answers for things that do not exist.
    let ghost = "01a20000-0000-7000-8000-000000000000";
    let ghost_file = format!("{ghost}.1.1");
    let routes: Vec<(&str, String, String, Option<Value>)> = vec![
        ("GET", format!("/user/orders/{order}"), format!("/user/orders/{ghost}"), None),
        ("GET", format!("/orders/{order}/files/available"), format!("/orders/{ghost}/files/available"), None),
        ("GET", format!("/orders/files/{file}"), format!("/orders/files/{ghost_file}"), None),
        ("HEAD", format!("/orders/files/{file}"), format!("/orders/files/{ghost_file}"), None),
        ("GET", format!("/user/orders/{order}/metalink/download"), format!("/user/orders/{ghost}/metalink/download"), None),
        ("GET", format!("/user/orders/{order}/download"), format!("/user/orders/{ghost}/download"), None),
        ("PUT", format!("/user/orders/pause/{order}"), format!("/user/orders/pause/{ghost}"), None),
        ("PUT", format!("/user/orders/resume/{order}"), format!("/user/orders/resume/{ghost}"), None),
        ("POST", format!("/user/orders/{order}/restart"), format!("/user/orders/{ghost}/restart"), None),
        ("PUT", format!("/user/orders/{order}/retry"), format!("/user/orders/{ghost}/retry"), None),
        ("DELETE", format!("/user/orders/{order}"), format!("/user/orders/{ghost}"), None),
        ("DELETE", format!("/user/orders/remove/{order}"), format!("/user/orders/remove/{ghost}"), None),
        ("DELETE", format!("/order/basket/dataset/{selection_again}"), "/order/basket/dataset/987654".into(), None),
        (
            "PUT",
            format!("/order/basket/dataset/{selection_again}/updateFileFilters"),
            "/order/basket/dataset/987654/updateFileFilters".into(),
            Some(json!({"fileTypes": ["RAWDATA"]})),
        ),
        (
            "PUT",
            format!("/order/basket/dataset/{selection_again}/updateProcessing"),
            "/order/basket/dataset/987654/updateProcessing".into(),
            Some(json!({"processBusinessId": "granary-pack"})),
        ),
    ];
    let send = |method: &str, path: &str, token: &str, body: &Option<Value>| {
        let mut req = c.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), r.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send()
    };
    for (method, annes, ghosts, body) in &routes {
        let bobs_view = shape(send(method, annes, &bob, body).await.unwrap()).await;
        let nothing = shape(send(method, ghosts, &bob, body).await.unwrap()).await;
        assert_eq!(bobs_view.0, 404, "Bob {method} {annes}: {bobs_view:?}");
        assert_eq!(bobs_view, nothing, "Bob {method} {annes} tells Ann's apart from nothing");
    }
    // Bob's own listings show nothing of Ann's.
    let bobs_orders: Value = c.get(r.url("/user/orders")).bearer_auth(&bob).send().await.unwrap().json().await.unwrap();
    assert_eq!(bobs_orders["content"], json!([]));
    let bobs_basket: Value = c.get(r.url("/order/basket")).bearer_auth(&bob).send().await.unwrap().json().await.unwrap();
    assert_eq!(bobs_basket["datasetSelections"], json!([]));
    assert_eq!(c.post(r.url("/orders/search")).bearer_auth(&bob).json(&json!({})).send().await.unwrap().status(), 403);

    // Nothing Bob tried changed anything: Ann's order is still done and hers, her basket still full.
    let annes: Value = c.get(r.url(&format!("/user/orders/{order}"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    assert_eq!((annes["status"].as_str(), annes["owner"].as_str()), (Some("DONE"), Some("ann@example.org")), "{annes}");
    let basket: Value = c.get(r.url("/order/basket")).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    assert_eq!(basket["datasetSelections"][0]["fileSelectionDescription"], Value::Null, "{basket}");
    assert_eq!(basket["datasetSelections"].as_array().unwrap().len(), 1);

    // An admin reads Ann's order and finds it by search; Ann's own token still works.
    assert_eq!(c.get(r.url(&format!("/user/orders/{order}"))).bearer_auth(&admin).send().await.unwrap().status(), 200);
    let found: Value = c
        .post(r.url("/orders/search"))
        .bearer_auth(&admin)
        .json(&json!({"owner": "ann@example.org"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["content"][0]["id"], order.as_str());

    // The download redirects to a signed link: it works as given, not once altered, not once expired.
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = no_redirect.get(r.url(&format!("/orders/files/{file}"))).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(res.status(), 302);
    let link = res.headers()["location"].to_str().unwrap().to_owned();
    let altered = |from: &str, to: &str| {
        assert!(link.contains(from), "{link} has {from}");
        link.replacen(from, to, 1)
    };
    let signature = link.split("signature=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let flipped = format!("{}{}", if signature.starts_with('0') { "1" } else { "0" }, &signature[1..]);
    let expires = link.split("expires=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let later = (expires.parse::<i64>().unwrap() + 3600).to_string();
    let got = no_redirect.get(&link).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().len(), content.len());
    for (what, tampered) in [
        ("another signature", altered(&signature, &flipped)),
        ("a later expiry", altered(&format!("expires={expires}"), &format!("expires={later}"))),
        ("no signature", altered(&format!("signature={signature}"), "signature=")),
    ] {
        assert_eq!(no_redirect.get(&tampered).send().await.unwrap().status(), 403, "{what}: {tampered}");
    }
    wait_for("the signed link to expire", Duration::from_secs(10), || async {
        (no_redirect.get(&link).send().await.ok()?.status() == 403).then_some(())
    })
    .await;
}
