//! The basket end to end on the embedded backend: products ingested through feature-ingest are put in
//! baskets by id, by search and by uploaded file, counted, filtered and removed, each user reaching only
//! their own basket and only the datasets their groups open; concurrent changes all land.

use basket_api::BasketApi;
use granary_lambda::Config;
use granary_lambda::http::apigw_request;
use granary_testkit::{Site, answer, dataset, file, product};
use serde_json::{Value, json};

type Caller = Option<(&'static str, &'static [&'static str])>;
const ANN: Caller = Some(("ann@example.org", &["s2"]));
const BOB: Caller = Some(("bob@example.org", &["other"]));

async fn call(api: &BasketApi, method: &str, path: &str, body: Option<&str>, caller: Caller) -> (u16, Value) {
    answer(api.handle(apigw_request(method, path, "", body, caller)).await.unwrap())
}

fn tile(n: u32) -> Value {
    product(
        &format!("tile-{n:02}"),
        &["S2"],
        json!({"acquisitionDate": format!("2026-11-{:02}T10:00:00Z", n + 1), "mission": if n.is_multiple_of(2) { "S2A" } else { "S2B" }}),
        json!({"type": "Point", "coordinates": [f64::from(n), 43.5]}),
        vec![
            file(&format!("t{n}.zip"), "RAWDATA", 1000, &format!("{n:032x}"), &format!("s3://b/nearline/t{n}"), Some("nearline")),
            file(&format!("t{n}.jpg"), "QUICKLOOK_SD", 10, &format!("{:032x}", n + 1000), "https://ql.example/t.jpg", None),
        ],
    )
}

async fn site() -> (Site, BasketApi) {
    let site = Site::new(Config::defaults()).await;
    site.create(&[dataset("S2", &["s2"], vec![]), dataset("OPEN", &["public"], vec![]), dataset("CLOSED", &["staff"], vec![])]).await;
    site.create(&(0..10).map(tile).collect::<Vec<_>>()).await;
    site.create(&[
        product("open-1", &["OPEN"], json!({}), Value::Null, vec![]),
        product("secret", &["CLOSED"], json!({}), Value::Null, vec![]),
    ])
    .await;
    let api = BasketApi::new(site.backend.clone(), site.config.clone());
    (site, api)
}

fn selection<'a>(basket: &'a Value, label: &str) -> &'a Value {
    basket["datasetSelections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["datasetLabel"] == label)
        .unwrap_or_else(|| panic!("no {label} in {basket}"))
}

fn counts(ds: &Value) -> (u64, u64, u64) {
    (ds["objectsCount"].as_u64().unwrap(), ds["filesCount"].as_u64().unwrap(), ds["filesSize"].as_u64().unwrap())
}

#[tokio::test]
async fn users_fill_their_own_basket_by_ids_and_search_counted_once_per_product() {
    let (_site, api) = site().await;
    assert_eq!(call(&api, "GET", "/order/basket", None, None).await.0, 401);
    let urn3 = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("tile-03"));
    let body = json!({"entityIdsToInclude": [urn3, "tile-01", "open-1", "nothing-like-it", "secret", "tile-01", "tile-03"]}).to_string();
    let (status, basket) = call(&api, "POST", "/order/basket/selection", Some(&body), ANN).await;
    assert_eq!(status, 200, "{basket}");
    assert_eq!(basket["unmatchedIds"], json!(["nothing-like-it", "secret"]));
    let s2 = selection(&basket, "S2 label");
    assert_eq!(counts(s2), (2, 4, 2020));
    assert_eq!(counts(selection(&basket, "OPEN label")), (1, 0, 0));

    // A search of S2 (S2B tiles, less tile-05) overlaps the ids: each product is counted once.
    let search = json!({"datasetUrn": "S2", "searchParameters": {"property.mission": ["S2B"]}, "entityIdsToExclude": ["tile-05"]});
    let (status, basket) = call(&api, "POST", "/order/basket/selection", Some(&search.to_string()), ANN).await;
    assert_eq!(status, 200, "{basket}");
    let s2 = selection(&basket, "S2 label");
    let dated = s2["itemsSelections"].as_array().unwrap();
    assert_eq!(dated.len(), 2);
    assert_eq!(dated[1]["objectsCount"], 4, "tiles 1, 3, 7 and 9");
    assert_eq!(counts(s2), (4, 8, 4040), "tiles 1, 3, 7, 9 once each");

    // Bob's basket is his own, and closed datasets do not exist for him.
    let (_, bobs) = call(&api, "GET", "/order/basket", None, BOB).await;
    assert_eq!(bobs["datasetSelections"], json!([]));
    assert_eq!(call(&api, "POST", "/order/basket/selection", Some(&search.to_string()), BOB).await.0, 404);
    let (status, problem) = call(&api, "POST", "/order/basket/selection", Some(r#"{"entityIdsToInclude": ["tile-01"]}"#), BOB).await;
    assert_eq!(status, 400);
    assert_eq!(problem["errors"], json!(["tile-01: no product you may see"]));

    // Bad requests name what is wrong.
    let (status, problem) =
        call(&api, "POST", "/order/basket/selection", Some(r#"{"datasetUrn": "S2", "searchParameters": {"from": "soon"}}"#), ANN).await;
    assert_eq!(status, 400);
    assert!(problem["errors"][0].as_str().unwrap().starts_with("searchParameters.from:"), "{problem}");
    assert_eq!(call(&api, "POST", "/order/basket/selection", Some(r#"{"searchParameters": {}}"#), ANN).await.0, 400);
    assert_eq!(call(&api, "POST", "/order/basket/selection", Some("[1]"), ANN).await.0, 400);
    let none = json!({"datasetUrn": "S2", "searchParameters": {"property.mission": "S9"}}).to_string();
    assert_eq!(call(&api, "POST", "/order/basket/selection", Some(&none), ANN).await.0, 400);
}

#[tokio::test]
async fn filters_recount_and_selections_come_out_one_by_one() {
    let (_site, api) = site().await;
    let all = json!({"datasetUrn": "S2"}).to_string();
    let (_, basket) = call(&api, "POST", "/order/basket/selection", Some(&all), ANN).await;
    let s2 = selection(&basket, "S2 label");
    assert_eq!(counts(s2), (10, 20, 10100));
    let id = s2["id"].as_u64().unwrap();

    let filters = format!("/order/basket/dataset/{id}/updateFileFilters");
    let (status, basket) = call(&api, "PUT", &filters, Some(r#"{"fileTypes": ["RAWDATA"], "fileNamePattern": "t[0-4]\\.zip"}"#), ANN).await;
    assert_eq!(status, 200, "{basket}");
    assert_eq!(counts(selection(&basket, "S2 label")), (10, 5, 5000));
    let (status, problem) = call(&api, "PUT", &filters, Some(r#"{"fileTypes": ["PICTURE"], "fileNamePattern": "("}"#), ANN).await;
    assert_eq!((status, problem["errors"].as_array().unwrap().len()), (400, 2));
    let processing = format!("/order/basket/dataset/{id}/updateProcessing");
    assert_eq!(call(&api, "PUT", &processing, Some(r#"{"processBusinessId": "granary-pack"}"#), ANN).await.0, 409);
    let (_, basket) = call(&api, "PUT", &filters, None, ANN).await;
    assert_eq!(counts(selection(&basket, "S2 label")), (10, 20, 10100));
    assert_eq!(call(&api, "PUT", &processing, Some(r#"{"processBusinessId": "granary-pack", "parameters": {}}"#), ANN).await.0, 200);
    let (status, problem) = call(&api, "PUT", &processing, Some(r#"{"processBusinessId": "p", "parameters": []}"#), ANN).await;
    assert_eq!(status, 400);
    let errors: Vec<&str> = problem["errors"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(errors, ["processBusinessId: \"p\" is not a processing of this site (granary-pack)", "parameters: must be an object"]);
    assert_eq!(call(&api, "PUT", "/order/basket/dataset/99/updateFileFilters", None, ANN).await.0, 404);

    // A second dated selection, then each removed by its date.
    assert_eq!(call(&api, "POST", "/order/basket/selection", Some(r#"{"entityIdsToInclude": ["open-1"]}"#), ANN).await.0, 200);
    let (_, basket) = call(&api, "POST", "/order/basket/selection", Some(&json!({"datasetUrn": "OPEN"}).to_string()), ANN).await;
    let open = selection(&basket, "OPEN label");
    let dates: Vec<String> = open["itemsSelections"].as_array().unwrap().iter().map(|d| d["date"].as_str().unwrap().to_owned()).collect();
    assert_eq!(dates.len(), 2);
    let open_id = open["id"].as_u64().unwrap();
    let encoded = dates[0].replace(':', "%3A");
    let (status, basket) = call(&api, "DELETE", &format!("/order/basket/dataset/{open_id}/{encoded}"), None, ANN).await;
    assert_eq!(status, 200, "{basket}");
    assert_eq!(selection(&basket, "OPEN label")["itemsSelections"].as_array().unwrap().len(), 1);
    assert_eq!(call(&api, "DELETE", &format!("/order/basket/dataset/{open_id}/{encoded}"), None, ANN).await.0, 404);
    let (_, basket) = call(&api, "DELETE", &format!("/order/basket/dataset/{open_id}/{}", dates[1]), None, ANN).await;
    assert_eq!(basket["datasetSelections"].as_array().unwrap().len(), 1);
    let (_, basket) = call(&api, "DELETE", &format!("/order/basket/dataset/{id}"), None, ANN).await;
    assert_eq!(basket["datasetSelections"], json!([]));
    assert_eq!(call(&api, "DELETE", &format!("/order/basket/dataset/{id}"), None, ANN).await.0, 404);
    assert_eq!(call(&api, "POST", "/order/basket/selection", Some(&all), ANN).await.0, 200);
    assert_eq!(call(&api, "DELETE", "/order/basket", None, ANN).await.0, 204);
    assert_eq!(call(&api, "GET", "/order/basket", None, ANN).await.1["datasetSelections"], json!([]));
}

#[tokio::test]
async fn uploads_add_the_ids_of_a_file_within_the_line_limit() {
    let (site, _) = site().await;
    let mut config = site.config.clone();
    config.basket_upload_max_lines = 5;
    let api = BasketApi::new(site.backend.clone(), config);
    let upload = |content_type: &'static str, body: String| {
        let api = &api;
        async move {
            let mut req = apigw_request("POST", "/order/basket/selection/upload", "", Some(&body), ANN);
            req.headers_mut().insert("content-type", content_type.parse().unwrap());
            answer(api.handle(req).await.unwrap())
        }
    };
    let multipart = "--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ids.txt\"\r\n\r\ntile-00\n  tile-02 \n\nghost\n\r\n--b0undary--\r\n";
    let (status, basket) = upload("multipart/form-data; boundary=b0undary", multipart.to_owned()).await;
    assert_eq!(status, 200, "{basket}");
    assert_eq!(basket["unmatchedIds"], json!(["ghost"]));
    assert_eq!(counts(selection(&basket, "S2 label")), (2, 4, 2020));
    let (status, problem) = upload("text/plain", (0..6).map(|n| format!("tile-0{n}\n")).collect()).await;
    assert_eq!(status, 400);
    assert!(problem["errors"][0].as_str().unwrap().contains("6 ids; at most 5"), "{problem}");
    let (status, problem) = upload("text/plain", "ghost\nphantom\n".into()).await;
    assert_eq!((status, problem["errors"].as_array().unwrap().len()), (400, 2));
    assert_eq!(
        upload("multipart/form-data; boundary=zz", "--zz\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--zz--".into()).await.0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_of_one_basket_all_land() {
    let (_site, api) = site().await;
    let adds = (0..8).map(|n| {
        let api = api.clone();
        tokio::spawn(async move {
            let body = json!({"entityIdsToInclude": [format!("tile-0{n}")]}).to_string();
            call(&api, "POST", "/order/basket/selection", Some(&body), ANN).await.0
        })
    });
    for add in adds.collect::<Vec<_>>() {
        assert_eq!(add.await.unwrap(), 200);
    }
    let (_, basket) = call(&api, "GET", "/order/basket", None, ANN).await;
    let s2 = selection(&basket, "S2 label");
    assert_eq!(s2["itemsSelections"].as_array().unwrap().len(), 8, "{basket}");
    assert_eq!(counts(s2).0, 8);
}

#[tokio::test]
async fn a_product_named_in_an_older_version_and_found_by_a_search_counts_once() {
    let (site, api) = site().await;
    // tile-04 gets a second version; the basket names V1 and searches the dataset (which holds V2).
    site.create(&[tile(4)]).await;
    let v1 = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("tile-04"));
    call(&api, "POST", "/order/basket/selection", Some(&json!({"entityIdsToInclude": [v1]}).to_string()), ANN).await;
    let (_, basket) = call(&api, "POST", "/order/basket/selection", Some(r#"{"datasetUrn": "S2"}"#), ANN).await;
    assert_eq!(counts(selection(&basket, "S2 label")).0, 10, "ten products, tile-04 once: {basket}");
}
