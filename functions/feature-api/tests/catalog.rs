//! The catalog end to end on the embedded backend: features created through feature-ingest are found
//! through feature-api's search routes, by dataset, time range, bounding box and properties, page by
//! page, as each caller may see them; new versions, patches and deletions move the catalog with them.

use feature_api::FeatureApi;
use granary_lambda::Config;
use granary_lambda::http::apigw_request;
use granary_testkit::{Site, answer, dataset, file, product};
use serde_json::{Value, json};

const USER: Option<(&str, &[&str])> = Some(("ann@example.org", &["s2"]));
const STRANGER: Option<(&str, &[&str])> = Some(("bob@example.org", &["other"]));
const ADMIN: Option<(&str, &[&str])> = Some(("root@example.org", &["admin"]));

async fn get(api: &FeatureApi, path: &str, query: &str, caller: Option<(&str, &[&str])>) -> (u16, Value) {
    answer(api.handle(apigw_request("GET", path, query, None, caller)).await.unwrap())
}

fn ids(page: &Value) -> Vec<String> {
    page["content"].as_array().unwrap().iter().map(|p| p["providerId"].as_str().unwrap().to_owned()).collect()
}

fn tile(n: u32, date: &str, lon: f64, mission: &str) -> Value {
    product(
        &format!("tile-{n:02}"),
        &["S2"],
        json!({"acquisitionDate": date, "mission": mission, "cloudCover": n}),
        json!({"type": "Point", "coordinates": [lon, 43.5]}),
        vec![
            file(
                &format!("t{n}.zip"),
                "RAWDATA",
                1000 + u64::from(n),
                &format!("{n:032x}"),
                &format!("s3://b/nearline/t{n}"),
                Some("nearline"),
            ),
            file(&format!("t{n}.jpg"), "QUICKLOOK_SD", 10, &format!("{:032x}", n + 1000), "https://ql.example/t.jpg", None),
        ],
    )
}

async fn site() -> (Site, FeatureApi) {
    let site = Site::new(Config::defaults()).await;
    site.create(&[
        dataset("S2", &["s2"], vec![file("spec.pdf", "RAWDATA", 2048, "9e107d9d372bb6826bd81d3542a419d6", "https://x/spec.pdf", None)]),
        dataset("OPEN", &["public"], vec![]),
    ])
    .await;
    let tiles: Vec<Value> = (0..12)
        .map(|n| tile(n, &format!("2026-11-{:02}T10:00:00Z", n + 1), f64::from(n), if n % 2 == 0 { "S2A" } else { "S2B" }))
        .collect();
    site.create(&tiles).await;
    site.create(&[product("open-1", &["OPEN"], json!({}), Value::Null, vec![]), product("orphan", &[], json!({}), Value::Null, vec![])])
        .await;
    let api = FeatureApi::new(site.backend.clone(), site.config.clone());
    (site, api)
}

#[tokio::test]
async fn users_find_the_datasets_and_products_their_groups_open_and_nothing_else() {
    let (_site, api) = site().await;
    let (status, page) = get(&api, "/datasets", "", USER).await;
    assert_eq!(status, 200);
    let mut labels: Vec<&str> = page["content"].as_array().unwrap().iter().map(|d| d["providerId"].as_str().unwrap()).collect();
    labels.sort();
    assert_eq!(labels, ["OPEN", "S2"]);
    let s2 = page["content"].as_array().unwrap().iter().find(|d| d["providerId"] == "S2").unwrap();
    assert_eq!((s2["label"].as_str(), s2["files"][0]["size"].as_u64()), (Some("S2 label"), Some(2048)));
    assert_eq!(ids(&get(&api, "/datasets", "", STRANGER).await.1), ["OPEN"]);
    assert_eq!(ids(&get(&api, "/public/datasets", "", None).await.1), ["OPEN"]);
    assert_eq!(get(&api, "/datasets", "", ADMIN).await.1["content"].as_array().unwrap().len(), 2);

    // The closed dataset's products do not exist for a stranger, nor anonymously; the open one's do.
    assert_eq!(get(&api, "/datasets/S2/products", "", STRANGER).await.0, 404);
    assert_eq!(get(&api, "/public/datasets/S2/products", "", None).await.0, 404);
    assert_eq!(ids(&get(&api, "/public/datasets/OPEN/products", "", None).await.1), ["open-1"]);
    let urn =
        get(&api, "/datasets/S2/products", "property.mission=S2A&size=1", USER).await.1["content"][0]["urn"].as_str().unwrap().to_owned();
    let (status, one) = get(&api, &format!("/products/{urn}"), "", USER).await;
    assert_eq!((status, one["last"].as_bool()), (200, Some(true)));
    let raw = one["files"].as_array().unwrap().iter().find(|f| f["dataType"] == "RAWDATA").unwrap();
    let quicklook = one["files"].as_array().unwrap().iter().find(|f| f["dataType"] == "QUICKLOOK_SD").unwrap();
    assert_eq!(
        (raw["online"].as_bool(), raw["reference"].as_bool(), raw["storage"].as_str()),
        (Some(false), Some(false), Some("nearline"))
    );
    assert_eq!((quicklook["online"].as_bool(), quicklook["reference"].as_bool()), (Some(true), Some(true)));
    assert_eq!(get(&api, &format!("/products/{urn}"), "", STRANGER).await.0, 404);
    assert_eq!(get(&api, &format!("/public/products/{urn}"), "", None).await.0, 404);
    // The feature-management read follows the same rule for users; producers and admins read any.
    assert_eq!(get(&api, &format!("/features/{urn}"), "", STRANGER).await.0, 404);
    assert_eq!(get(&api, &format!("/features/{urn}"), "", USER).await.0, 200);
    assert_eq!(get(&api, &format!("/features/{urn}"), "", Some(("p@example.org", &["producer"]))).await.0, 200);
    // A product in no dataset is seen by admins only.
    let orphan = "URN:FEATURE:DATA:granary:".to_owned() + &granary_domain::entity_uuid("orphan").to_string() + ":V1";
    assert_eq!(get(&api, &format!("/products/{orphan}"), "", USER).await.0, 404);
    assert_eq!(get(&api, &format!("/products/{orphan}"), "", ADMIN).await.0, 200);
    // Without a token, only the public routes answer.
    assert_eq!(get(&api, "/datasets", "", None).await.0, 401);
}

#[tokio::test]
async fn searches_filter_by_time_box_and_properties_and_page_to_the_end() {
    let (_site, api) = site().await;
    let search = |q: &'static str| {
        let api = &api;
        async move {
            let (status, page) = get(api, "/datasets/S2/products", q, USER).await;
            assert_eq!(status, 200, "{page}");
            let mut found = ids(&page);
            found.sort();
            found
        }
    };
    assert_eq!(search("size=100").await.len(), 12);
    assert_eq!(search("from=2026-11-03T10:00:00Z&to=2026-11-05T10:00:00Z").await, ["tile-02", "tile-03", "tile-04"]);
    assert_eq!(search("bbox=9.5,40,20,50").await, ["tile-10", "tile-11"]);
    assert_eq!(search("property.mission=S2B&bbox=0,40,4,50").await, ["tile-01", "tile-03"]);
    assert_eq!(search("property.cloudCover=7").await, ["tile-07"]);
    assert!(search("property.mission=S3").await.is_empty());

    // Pages of 5 follow their next links to the end, each product once.
    let mut seen = Vec::new();
    let mut query = "size=5&property.mission=S2A".to_owned();
    for _ in 0..5 {
        let (status, page) = get(&api, "/datasets/S2/products", &query, USER).await;
        assert_eq!(status, 200);
        seen.extend(ids(&page));
        match page["links"].as_array().unwrap().iter().find(|l| l["rel"] == "next") {
            Some(next) => query = next["href"].as_str().unwrap().split_once('?').unwrap().1.to_owned(),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["tile-00", "tile-02", "tile-04", "tile-06", "tile-08", "tile-10"]);

    // Bad parameters are each named.
    let (status, problem) = get(&api, "/datasets/S2/products", "from=soon&bbox=1,2&colour=red&size=0&page=%21", USER).await;
    assert_eq!(status, 400);
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 5, "{problem}");
    assert_eq!(get(&api, "/datasets/NOPE/products", "", USER).await.0, 404);
}

#[tokio::test]
async fn the_catalog_follows_new_versions_patches_and_deletions() {
    let (site, api) = site().await;
    let count = |q: &'static str| {
        let api = &api;
        async move { ids(&get(api, "/datasets/S2/products", q, USER).await.1) }
    };
    // A new version moves to the other dataset: it leaves S2 and enters OPEN.
    site.create(&[product("tile-00", &["OPEN"], json!({"mission": "S2C"}), Value::Null, vec![])]).await;
    assert!(!count("size=100").await.contains(&"tile-00".to_owned()));
    let mut open = ids(&get(&api, "/public/datasets/OPEN/products", "", None).await.1);
    open.sort();
    assert_eq!(open, ["open-1", "tile-00"]);

    // A patch of the latest version is what the catalog shows.
    let urn_01 = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("tile-01"));
    let patch = json!({"metadata": {}, "feature": {"type": "Feature", "id": "tile-01", "entityType": "DATA", "model": "M",
                       "urn": urn_01, "geometry": null, "properties": {"mission": "S2X"}}});
    let mut msg = granary_testkit::message("patch-1", &patch.to_string());
    msg.attributes.insert("regards.request.type".into(), "PATCH".into());
    site.ingest_raw(&[msg]).await;
    assert_eq!(count("property.mission=S2X").await, ["tile-01"]);

    // Deleting the latest version brings the previous one back; deleting the last one empties it.
    site.create(&[tile(2, "2030-01-01T00:00:00Z", 2.0, "S2Z")]).await;
    assert_eq!(count("property.mission=S2Z").await, ["tile-02"]);
    let delete = |urn: String, id: &str| {
        let mut m = granary_testkit::message(id, &json!({"urn": urn, "priority": "NORMAL"}).to_string());
        m.attributes.insert("regards.request.type".into(), "DELETION".into());
        m
    };
    let uuid = granary_domain::entity_uuid("tile-02");
    site.ingest_raw(&[delete(format!("URN:FEATURE:DATA:granary:{uuid}:V2"), "del-1")]).await;
    assert_eq!(count("property.mission=S2A&from=2026-11-03T00:00:00Z&to=2026-11-03T23:00:00Z").await, ["tile-02"]);
    site.ingest_raw(&[delete(format!("URN:FEATURE:DATA:granary:{uuid}:V1"), "del-2")]).await;
    assert!(!count("size=100").await.contains(&"tile-02".to_owned()));
}

#[tokio::test]
async fn storage_locations_may_only_use_the_listed_buckets() {
    let mut config = Config::defaults();
    config.location_buckets = Some(["archive".to_owned()].into());
    let site = Site::new(config).await;
    let api = FeatureApi::new(site.backend.clone(), site.config.clone());
    let put = |name: &str, bucket: &str| {
        let body = json!({"bucket": bucket, "prefix": "p", "class": "ONLINE"}).to_string();
        apigw_request("PUT", &format!("/storage-locations/{name}"), "", Some(&body), ADMIN)
    };
    assert_eq!(answer(api.handle(put("listed", "archive")).await.unwrap()).0, 201);
    assert_eq!(answer(api.handle(put("configured", "storage")).await.unwrap()).0, 201, "the configured locations' bucket");
    let (status, problem) = answer(api.handle(put("other", "someone-elses")).await.unwrap());
    assert_eq!(status, 400);
    assert!(problem.to_string().contains("someone-elses is not one Granary may store into"), "{problem}");
}

#[tokio::test]
async fn a_recipient_may_not_be_one_of_granarys_own_queues() {
    let site = Site::new(Config::defaults()).await;
    let api = FeatureApi::new(site.backend.clone(), site.config.clone());
    let put = |queue: &str| {
        let body = json!({"target": {"type": "queue", "queue": queue}, "ackRequired": false, "blocking": false}).to_string();
        apigw_request("PUT", "/recipients/r1", "", Some(&body), ADMIN)
    };
    let (status, problem) = answer(api.handle(put("https://sqs.eu-west-1.amazonaws.com/1/feature-notification")).await.unwrap());
    assert_eq!(status, 400, "{problem}");
    assert!(problem.to_string().contains("feature-notification is one of Granary's own queues"), "{problem}");
    assert_eq!(answer(api.handle(put("partner-inbox")).await.unwrap()).0, 201);
}
