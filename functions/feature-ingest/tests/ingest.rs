//! feature-ingest against the embedded backend: messages in the shapes producers send, checked by what
//! is stored and what is answered on the response queue.

use feature_ingest::FeatureIngest;
use granary_embedded::{Embedded, EmbeddedOptions};
use granary_lambda::Config;
use granary_lambda::sqs::sqs_event;
use granary_ports::{Backend, Query, ReceivedMessage};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

struct Fixture {
    _dir: tempfile::TempDir,
    embedded: Embedded,
    backend: Backend,
    config: Config,
    ingest: FeatureIngest,
}

fn config() -> Config {
    Config::defaults()
}

async fn fixture() -> Fixture {
    fixture_with_clock(Arc::new(granary_ports::SystemClock)).await
}

/// Defines model `name` as an admin would.
async fn define_model(backend: &Backend, name: &str, definition: &Value) {
    let compiled = granary_domain::model::compile_model(name, definition).unwrap();
    granary_stores::models::ModelStore::new("features").put(backend, definition, &compiled, "admin").await.unwrap();
}

async fn fixture_with_clock(clock: Arc<dyn granary_ports::Clock>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    // The resources the template declares, as granary-local provisions them.
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).unwrap();
    let mut options = EmbeddedOptions::new(dir.path(), resources);
    options.clock = clock;
    let embedded = Embedded::open(options).unwrap();
    let backend = embedded.backend();
    // The model the creations below name, accepting any properties; model rules have their own tests.
    define_model(&backend, "S2_L1C", &json!({"type": "object", "x-granary-type": "DATA"})).await;
    let ingest = FeatureIngest::new(backend.clone(), config.clone());
    Fixture { _dir: dir, embedded, backend, config, ingest }
}

/// The creation example of the brief (`examples/sqs-creation.json`), with another providerId.
fn creation(provider_id: &str) -> Value {
    json!({
        "metadata": {"sessionOwner": "s2-ingest-chain", "session": "2026-11-23", "priority": "HIGH", "override": false, "updateIfExists": false},
        "feature": {
            "type": "Feature", "id": provider_id, "entityType": "DATA", "model": "S2_L1C",
            "geometry": {"type": "Point", "coordinates": [1.0, 43.2]},
            "properties": {"mission": "S2A"},
            "files": []
        }
    })
}

fn message(id: &str, body: &str, attrs: &[(&str, &str)]) -> ReceivedMessage {
    ReceivedMessage {
        message_id: id.into(),
        receipt_handle: format!("{id}.1"),
        body: body.into(),
        attributes: attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
        receive_count: 1,
        sent_at_ms: 0,
    }
}

impl Fixture {
    async fn deliver(&self, messages: &[ReceivedMessage]) -> Vec<String> {
        let event = sqs_event("feature-high", messages).unwrap();
        let response = self.ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap();
        response.batch_item_failures.into_iter().map(|f| f.item_identifier).collect()
    }

    async fn responses(&self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let got = self.backend.queue.receive(&self.config.response_queue, 10, None, Duration::ZERO).await.unwrap();
            if got.is_empty() {
                return out;
            }
            out.extend(got.iter().map(|m| serde_json::from_str::<Value>(&m.body).unwrap()));
            self.backend
                .queue
                .delete_batch(&self.config.response_queue, got.into_iter().map(|m| m.receipt_handle).collect())
                .await
                .unwrap();
        }
    }

    async fn versions(&self, provider_id: &str) -> Vec<(String, bool)> {
        let pk = format!("F#{}", granary_domain::entity_uuid(provider_id));
        let page = self.backend.table.query(Query::partition("features", pk)).await.unwrap();
        page.items.iter().map(|i| (i.get_str("urn").unwrap().to_owned(), i.get("last").and_then(Value::as_bool).unwrap())).collect()
    }
}

fn states(events: &[Value], request_id: &str) -> Vec<String> {
    events.iter().filter(|e| e["requestId"] == request_id).map(|e| e["state"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn creation_from_sqs_is_versioned_and_answered() {
    let f = fixture().await;
    let body = creation("product-0001").to_string();
    let failed = f
        .deliver(&[message(
            "m1",
            &body,
            &[("regards.request.type", "CREATION"), ("regards.request.id", "r1"), ("regards.request.owner", "chain")],
        )])
        .await;
    assert!(failed.is_empty());
    assert_eq!(
        f.versions("product-0001").await,
        vec![("URN:FEATURE:DATA:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1".to_owned(), true)]
    );
    let events = f.responses().await;
    assert_eq!(states(&events, "r1"), vec!["GRANTED", "SUCCESS"]);
    let success = events.iter().find(|e| e["state"] == "SUCCESS").unwrap();
    assert_eq!(success["urn"], "URN:FEATURE:DATA:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1");
    assert_eq!(success["requestOwner"], "chain");
    assert_eq!(success["eventId"], "r1:SUCCESS");
}

#[tokio::test]
async fn next_creation_of_a_provider_id_is_the_next_version() {
    let f = fixture().await;
    let body = creation("p").to_string();
    f.deliver(&[message("m1", &body, &[("regards.request.id", "r1")]), message("m2", &body, &[("regards.request.id", "r2")])]).await;
    let v = f.versions("p").await;
    assert_eq!(v.len(), 2);
    assert!(v[0].0.ends_with(":V1") && !v[0].1, "V1 is no longer the latest: {v:?}");
    assert!(v[1].0.ends_with(":V2") && v[1].1, "V2 is the latest: {v:?}");
}

#[tokio::test]
async fn redelivered_message_has_the_effect_of_one_delivery() {
    let f = fixture().await;
    let body = creation("p").to_string();
    let m = message("m1", &body, &[("regards.request.id", "r1")]);
    f.deliver(std::slice::from_ref(&m)).await;
    let first = f.responses().await;
    let failed = f.deliver(&[m]).await;
    assert!(failed.is_empty(), "a redelivery succeeds (and is deleted)");
    assert_eq!(f.versions("p").await.len(), 1, "no second version");
    assert!(f.responses().await.is_empty(), "no second event");
    assert_eq!(states(&first, "r1"), vec!["GRANTED", "SUCCESS"]);
}

#[tokio::test]
async fn new_message_reusing_a_request_id_is_denied_as_duplicate() {
    let f = fixture().await;
    f.deliver(&[message("m1", &creation("p").to_string(), &[("regards.request.id", "r1")])]).await;
    f.responses().await;
    f.deliver(&[message("m2", &creation("q").to_string(), &[("regards.request.id", "r1")])]).await;
    let events = f.responses().await;
    assert_eq!(states(&events, "r1"), vec!["DENIED"]);
    assert!(events[0]["errors"][0].as_str().unwrap().contains("already used"), "{events:?}");
    assert!(f.versions("q").await.is_empty(), "the duplicate created nothing");
}

/// Finished requests (SUCCESS and DENIED) carry the table's TTL: they are purged 30 days after they
/// finish and not before, and until then a redelivered message is still recognised.
#[tokio::test]
async fn finished_requests_are_purged_after_their_retention_and_not_before() {
    let clock = Arc::new(granary_ports::ManualClock::starting_now());
    let f = fixture_with_clock(clock.clone()).await;
    let created = message("m1", &creation("p").to_string(), &[("regards.request.id", "ok")]);
    let denied = message("m2", "{not json", &[("regards.request.id", "bad"), ("regards.request.type", "CREATION")]);
    f.deliver(&[created.clone(), denied]).await;
    assert_eq!(states(&f.responses().await, "bad"), vec!["DENIED"]);
    let finished_at = granary_ports::Clock::now_ms(clock.as_ref()) / 1000;
    let record = |id: &'static str| {
        let backend = f.backend.clone();
        async move { backend.table.get("requests", &granary_stores::requests::request_key(id)).await.unwrap() }
    };
    for id in ["ok", "bad"] {
        let purge_at = record(id).await.unwrap().get_i64("purgeAt");
        assert_eq!(purge_at, Some(finished_at + 30 * 86_400), "request {id}");
    }
    clock.advance(chrono::Duration::days(29));
    assert_eq!(f.embedded.purge_expired(1000).await.unwrap(), 0, "nothing is due before 30 days");
    f.deliver(std::slice::from_ref(&created)).await;
    assert_eq!(f.versions("p").await.len(), 1, "a late redelivery is still one delivery");
    clock.advance(chrono::Duration::days(1) + chrono::Duration::seconds(1));
    assert_eq!(f.embedded.purge_expired(1000).await.unwrap(), 2, "both records, nothing else");
    assert!(record("ok").await.is_none() && record("bad").await.is_none());
    assert_eq!(f.versions("p").await.len(), 1, "the feature stays");
}

#[tokio::test]
async fn kind_is_inferred_without_the_type_attribute_or_denied_naming_it() {
    let f = fixture().await;
    f.deliver(&[message("m1", &creation("p").to_string(), &[])]).await;
    assert_eq!(f.versions("p").await.len(), 1, "a feature with session metadata is a creation");
    let events = f.responses().await;
    assert_eq!(states(&events, "m1"), vec!["GRANTED", "SUCCESS"], "without regards.request.id, the message id is the request id");
    f.deliver(&[message("m2", r#"{"something": "else"}"#, &[])]).await;
    let events = f.responses().await;
    assert_eq!(states(&events, "m2"), vec!["DENIED"]);
    assert!(events[0]["errors"][0].as_str().unwrap().contains("regards.request.type"), "{events:?}");
}

#[tokio::test]
async fn bad_messages_are_denied_with_every_error_and_the_batch_goes_on() {
    let f = fixture().await;
    let mut bad = creation("x");
    bad["feature"]["id"] = json!("y".repeat(101));
    bad["feature"]["entityType"] = json!("THING");
    bad["metadata"]["session"] = json!("");
    let failed = f
        .deliver(&[
            message("m1", "{not json", &[("regards.request.type", "CREATION")]),
            message("m2", &bad.to_string(), &[("regards.request.type", "CREATION")]),
            message("m3", &creation("good").to_string(), &[("regards.request.type", "CREATION")]),
            message("m4", &creation("z").to_string(), &[("regards.request.type", "UPSERT")]),
        ])
        .await;
    assert!(failed.is_empty(), "bad input is answered, not retried");
    let events = f.responses().await;
    assert_eq!(states(&events, "m1"), vec!["DENIED"]);
    let m2 = events.iter().find(|e| e["requestId"] == "m2").unwrap();
    assert_eq!(m2["errors"].as_array().unwrap().len(), 3, "every error listed: {m2}");
    assert_eq!(states(&events, "m3"), vec!["GRANTED", "SUCCESS"], "the good message in the batch is processed");
    assert_eq!(states(&events, "m4"), vec!["DENIED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_of_one_provider_id_get_distinct_versions() {
    let f = fixture().await;
    let body = creation("hot").to_string();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let ingest = f.ingest.clone();
        let m = message(&format!("m{i}"), &body, &[("regards.request.id", &format!("r{i}"))]);
        tasks.push(tokio::spawn(async move {
            let event = sqs_event("feature-high", &[m]).unwrap();
            ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap()
        }));
    }
    for r in futures::future::join_all(tasks).await {
        assert!(r.unwrap().batch_item_failures.is_empty());
    }
    let v = f.versions("hot").await;
    let urns: Vec<&str> = v.iter().map(|(u, _)| u.rsplit(':').next().unwrap()).collect();
    assert_eq!(urns, (1..=12).map(|i| format!("V{i}")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(v.iter().filter(|(_, last)| *last).count(), 1, "exactly one latest version: {v:?}");
    assert!(v.last().unwrap().1, "the latest is the highest");
}

#[tokio::test]
async fn events_left_in_the_outbox_are_relayed() {
    let f = fixture().await;
    let store = granary_stores::outbox::Outbox::new("requests");
    let event = granary_stores::outbox::OutboxEvent {
        event_id: "r9:SUCCESS".into(),
        queue: "feature-response".into(),
        body: "{\"requestId\":\"r9\"}".into(),
    };
    // A handler that committed this row and died before sending it. The embedded backend sends
    // staged events with the commit; rows are what DynamoDB gets (`into_row`), written here as such.
    f.backend.table.transact(vec![store.stage(&event, f.backend.clock.now_ms() - 60_000).into_row()]).await.unwrap();
    let fresh = granary_stores::outbox::OutboxEvent { event_id: "r10:SUCCESS".into(), ..event.clone() };
    f.backend.table.transact(vec![store.stage(&fresh, f.backend.clock.now_ms()).into_row()]).await.unwrap();
    let sent = store.relay(&f.backend, f.backend.clock.now_ms() - 10_000).await.unwrap();
    assert_eq!(sent, 1, "only the stale row is relayed; its writer may still send the fresh one");
    let got = f.backend.queue.receive("feature-response", 10, None, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attributes.get("granary.event.id").map(String::as_str), Some("r9:SUCCESS"));
    assert_eq!(store.relay(&f.backend, f.backend.clock.now_ms() - 10_000).await.unwrap(), 0, "relayed once");
}

#[tokio::test]
async fn on_the_embedded_backend_staged_events_are_sent_with_their_commit_and_only_then() {
    let f = fixture().await;
    let store = granary_stores::outbox::Outbox::new("requests");
    let event = |id: &str| granary_stores::outbox::OutboxEvent {
        event_id: id.into(),
        queue: "feature-response".into(),
        body: format!("{{\"requestId\":\"{id}\"}}"),
    };
    let now = f.backend.clock.now_ms();
    // A transaction whose condition fails sends nothing.
    let guard = granary_ports::TxOp::Check {
        table: "requests".into(),
        key: granary_ports::Key::new("absent", "x"),
        cond: granary_ports::Cond::ItemExists,
    };
    let refused = f.backend.table.transact(vec![store.stage(&event("no:SUCCESS"), now), guard]).await;
    assert!(matches!(refused, Err(granary_ports::PortError::TransactionCanceled { index: 1, .. })), "{refused:?}");
    assert!(f.take("feature-response").await.is_empty(), "a cancelled transaction sends nothing");
    assert!(!f.backend.table.take_sent_with_commit("no:SUCCESS"));

    // A committed one has sent its events, and left no outbox row.
    let (a, b) = (event("a:SUCCESS"), event("b:SUCCESS"));
    f.backend.table.transact(vec![store.stage(&a, now), store.stage(&b, now)]).await.unwrap();
    let rows = f.backend.table.query(Query::partition("requests", "pending").on_index("outbox")).await.unwrap();
    assert!(rows.items.is_empty(), "no outbox row: {:?}", rows.items);
    // The flush after the commit sends what the commit did not (a nudge never staged), once.
    let nudge = event("nudge:1");
    store.flush(&f.backend, &[a.clone(), b.clone(), nudge.clone()]).await.unwrap();
    let got = f.take("feature-response").await;
    let mut ids: Vec<&str> = got.iter().filter_map(|m| m.attributes.get("granary.event.id").map(String::as_str)).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a:SUCCESS", "b:SUCCESS", "nudge:1"]);
    // Asked again (a redelivery's flush), an event committed earlier is no longer known as sent.
    assert!(!f.backend.table.take_sent_with_commit("a:SUCCESS"));
}

fn patch(urn: &str, properties: Value, geometry: Value) -> String {
    json!({"metadata": {"priority": "NORMAL"}, "feature": {"type": "Feature", "urn": urn, "properties": properties, "geometry": geometry}})
        .to_string()
}

impl Fixture {
    /// Receives and deletes what `queue` holds, as an event source mapping would after a handler.
    async fn take(&self, queue: &str) -> Vec<ReceivedMessage> {
        let got = self.backend.queue.receive(queue, 10, None, Duration::ZERO).await.unwrap();
        if !got.is_empty() {
            self.backend.queue.delete_batch(queue, got.iter().map(|m| m.receipt_handle.clone()).collect()).await.unwrap();
        }
        got
    }

    async fn feature(&self, urn: &str) -> Option<Value> {
        let u: granary_domain::Urn = urn.parse().unwrap();
        let key = granary_ports::Key::new(format!("F#{}", u.uuid), format!("V{:03}", u.version));
        self.backend.table.get("features", &key).await.unwrap().map(|i| Value::Object(i.attrs))
    }

    async fn request(&self, id: &str) -> Value {
        let item = self.backend.table.get("requests", &granary_ports::Key::new(format!("R#{id}"), "R")).await.unwrap().unwrap();
        Value::Object(item.attrs)
    }
}

const P1: &str = "URN:FEATURE:DATA:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1";

#[tokio::test]
async fn patch_merges_properties_replaces_geometry_and_keeps_the_version() {
    let f = fixture().await;
    f.deliver(&[message("c1", &creation("product-0001").to_string(), &[])]).await;
    f.responses().await;
    let body = patch(P1, json!({"cloudCover": 3.5, "mission": null}), json!({"type": "Point", "coordinates": [2.0, 44.0]}));
    let failed = f.deliver(&[message("p1", &body, &[("regards.request.type", "PATCH"), ("regards.request.owner", "editor")])]).await;
    assert!(failed.is_empty());
    let item = f.feature(P1).await.expect("V1 still there");
    assert_eq!(item["feature"]["properties"], json!({"cloudCover": 3.5}), "merged, null removed");
    assert_eq!(item["feature"]["geometry"]["coordinates"], json!([2.0, 44.0]));
    assert_eq!(item["feature"]["history"]["updatedBy"], "editor");
    assert_eq!(item["revision"], 1);
    assert_eq!(f.versions("product-0001").await.len(), 1, "a patch keeps the version");
    let events = f.responses().await;
    assert_eq!(states(&events, "p1"), vec!["GRANTED", "SUCCESS"]);
    assert!(events.iter().all(|e| e["type"] == "PATCH" && e["urn"] == P1));
    assert_eq!(f.request("p1").await["action"], "UPDATED");
    // The same message again changes nothing.
    f.deliver(&[message("p1", &body, &[("regards.request.type", "PATCH")])]).await;
    assert_eq!(f.feature(P1).await.unwrap()["revision"], 1, "a redelivered patch applies once");
}

#[tokio::test]
async fn patch_of_an_unknown_urn_is_denied() {
    let f = fixture().await;
    f.deliver(&[message("p1", &patch(P1, json!({"a": 1}), Value::Null), &[("regards.request.type", "PATCH")])]).await;
    let events = f.responses().await;
    assert_eq!(states(&events, "p1"), vec!["DENIED"]);
    assert!(events[0]["errors"][0].as_str().unwrap().contains("no feature"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_of_one_feature_each_apply_once() {
    let f = fixture().await;
    f.deliver(&[message("c1", &creation("product-0001").to_string(), &[])]).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let ingest = f.ingest.clone();
        let m = message(&format!("p{i}"), &patch(P1, json!({ format!("k{i}"): i }), Value::Null), &[("regards.request.type", "PATCH")]);
        tasks.push(tokio::spawn(async move {
            ingest.handle(LambdaEvent::new(sqs_event("feature-normal", &[m]).unwrap(), Context::default())).await.unwrap()
        }));
    }
    for t in futures::future::join_all(tasks).await {
        assert!(t.unwrap().batch_item_failures.is_empty());
    }
    let item = f.feature(P1).await.unwrap();
    for i in 0..10 {
        assert_eq!(item["feature"]["properties"][format!("k{i}")], i, "patch {i} was not lost: {}", item["feature"]["properties"]);
    }
    assert_eq!(item["revision"], 10);
}

#[tokio::test]
async fn deleting_the_latest_version_makes_the_previous_one_latest_and_a_second_deletion_is_already_deleted() {
    let f = fixture().await;
    let body = creation("product-0001").to_string();
    f.deliver(&[message("c1", &body, &[]), message("c2", &body, &[])]).await;
    let v2 = P1.replace(":V1", ":V2");
    let del = |urn: &str| json!({"urn": urn, "priority": "HIGH"}).to_string();
    f.deliver(&[message("d1", &del(&v2), &[("regards.request.type", "DELETION")])]).await;
    assert!(f.feature(&v2).await.is_none(), "V2 deleted");
    assert_eq!(f.feature(P1).await.unwrap()["last"], true, "V1 is the latest again");
    assert_eq!(f.request("d1").await["action"], "DELETED");
    f.deliver(&[message("d2", &del(&v2), &[("regards.request.type", "DELETION")])]).await;
    assert_eq!(f.request("d2").await["state"], "SUCCESS");
    assert_eq!(f.request("d2").await["action"], "ALREADY_DELETED");
    let events = f.responses().await;
    assert_eq!(states(&events, "d2"), vec!["GRANTED", "SUCCESS"]);
    f.deliver(&[message(
        "d3",
        &del("URN:FEATURE:DATA:other:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1"),
        &[("regards.request.type", "DELETION")],
    )])
    .await;
    assert_eq!(states(&f.responses().await, "d3"), vec!["DENIED"], "a URN of another tenant is refused");
}

#[tokio::test]
async fn requests_dated_ahead_wait_parked_until_released_by_the_moved_clock() {
    let clock = Arc::new(granary_ports::ManualClock::starting_now());
    let f = fixture_with_clock(clock.clone()).await;
    let release = delayed_release::DelayedRelease::new(f.backend.clone(), &f.config);
    let at = |d: chrono::Duration| (clock.now() + d).to_rfc3339();
    use granary_ports::Clock;
    let in_2h = at(chrono::Duration::hours(2));
    let in_30m = at(chrono::Duration::minutes(30));
    let past = at(chrono::Duration::minutes(-5));
    let body = creation("delayed").to_string();
    f.deliver(&[
        message("r1", &body, &[("regards.request.id", "r1"), ("regards.request.date", &in_2h)]),
        message("r2", &body, &[("regards.request.id", "r2"), ("regards.request.date", &in_30m)]),
        message("r3", &body, &[("regards.request.id", "r3")]),
        message("r4", &body, &[("regards.request.id", "r4"), ("regards.request.date", &past)]),
        message("r5", &body, &[("regards.request.id", "r5"), ("regards.request.date", "tomorrow")]),
    ])
    .await;
    let events = f.responses().await;
    assert_eq!(states(&events, "r1"), vec!["GRANTED"], "parked requests are granted at once");
    assert_eq!(states(&events, "r2"), vec!["GRANTED"]);
    assert_eq!(states(&events, "r3"), vec!["GRANTED", "SUCCESS"]);
    assert_eq!(states(&events, "r4"), vec!["GRANTED", "SUCCESS"], "a past date does not wait");
    assert_eq!(states(&events, "r5"), vec!["DENIED"], "an unreadable date is refused");
    assert_eq!(f.request("r1").await["step"], "LOCAL_DELAYED");
    assert_eq!(f.versions("delayed").await.len(), 2);

    // Releases nothing early, whatever the clock says short of the date.
    assert_eq!(release.release_due().await.unwrap(), 0);
    clock.advance(chrono::Duration::minutes(29));
    assert_eq!(release.release_due().await.unwrap(), 0, "nothing released before its date");
    clock.advance(chrono::Duration::minutes(2));
    assert_eq!(release.release_due().await.unwrap(), 1, "r2 is due");
    assert_eq!(f.request("r2").await["step"], "LOCAL_SCHEDULED");
    let released = f.take("feature-high").await;
    assert_eq!(released.len(), 1, "back on the queue of its priority (HIGH)");
    assert_eq!(released[0].attributes.get("regards.request.id").map(String::as_str), Some("r2"));
    f.deliver(&[message(
        "rel-r2",
        &released[0].body,
        &released[0].attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
    )])
    .await;
    assert_eq!(f.request("r2").await["state"], "SUCCESS");
    // The same release sent twice (a crash between send and mark) changes nothing.
    f.deliver(&[message(
        "rel-r2-again",
        &released[0].body,
        &released[0].attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
    )])
    .await;
    assert_eq!(f.versions("delayed").await.len(), 3, "r2 made one version");
    assert_eq!(states(&f.responses().await, "r2"), vec!["SUCCESS"], "GRANTED is not sent twice");

    clock.advance(chrono::Duration::minutes(88));
    assert_eq!(release.release_due().await.unwrap(), 0, "r1 still waits at 1 h 59");
    clock.advance(chrono::Duration::minutes(2));
    assert_eq!(release.release_due().await.unwrap(), 1, "r1 is due at 2 h");
    let released = f.take("feature-high").await;
    assert_eq!(released.len(), 1);
    f.deliver(&[message(
        "rel-r1",
        &released[0].body,
        &released[0].attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
    )])
    .await;
    assert_eq!(f.request("r1").await["state"], "SUCCESS");
    assert_eq!(states(&f.responses().await, "r1"), vec!["SUCCESS"]);
    assert_eq!(f.versions("delayed").await.len(), 4, "every valid request made its version, none twice");
    assert_eq!(release.release_due().await.unwrap(), 0, "nothing left parked");
}

#[tokio::test]
async fn properties_are_checked_against_the_model_with_every_error_listed() {
    let f = fixture().await;
    let mut s2: Value = serde_json::from_str(include_str!("../../../shared/granary-domain/tests/fixtures/model-s2-l1c.json")).unwrap();
    s2["name"] = json!("S2_REAL");
    define_model(&f.backend, "S2_REAL", &s2).await;
    let mut good = creation("tile-1");
    good["feature"]["model"] = json!("S2_REAL");
    good["feature"]["properties"] = json!({"mission": "S2A", "tileId": "31TCJ", "cloudCover": 12.4, "acquisitionDate": "2026-11-23T10:15:31Z", "quality": {"valid": true}});
    let mut bad = good.clone();
    bad["feature"]["id"] = json!("tile-2");
    bad["feature"]["properties"]["cloudCover"] = json!(101);
    bad["feature"]["properties"]["mission"] = json!("S3A");
    bad["feature"]["properties"]["TileId"] = json!("x");
    let mut unknown = good.clone();
    unknown["feature"]["model"] = json!("NOPE");
    let mut dataset = good.clone();
    dataset["feature"]["entityType"] = json!("DATASET");
    f.deliver(&[
        message("ok", &good.to_string(), &[]),
        message("bad", &bad.to_string(), &[]),
        message("unknown", &unknown.to_string(), &[]),
        message("dataset", &dataset.to_string(), &[]),
    ])
    .await;
    let events = f.responses().await;
    assert_eq!(states(&events, "ok"), vec!["GRANTED", "SUCCESS"]);
    let errors = |id: &str| {
        events
            .iter()
            .find(|e| e["requestId"] == id && e["state"] == "DENIED")
            .map(|e| e["errors"].clone())
            .unwrap_or_else(|| panic!("{id} not denied: {events:?}"))
    };
    let bad_errors = errors("bad");
    assert_eq!(bad_errors.as_array().unwrap().len(), 3, "every error: {bad_errors}");
    assert!(bad_errors.to_string().contains("feature.properties.cloudCover"), "{bad_errors}");
    assert!(errors("unknown")[0].as_str().unwrap().contains("unknown model"));
    assert!(errors("dataset")[0].as_str().unwrap().contains("feature.entityType"));
    assert!(f.versions("tile-2").await.is_empty(), "nothing stored for a denied request");

    // A patch is checked in patch mode: mandatory attributes may be absent, types still hold.
    let urn = events.iter().find(|e| e["requestId"] == "ok" && e["state"] == "SUCCESS").unwrap()["urn"].as_str().unwrap().to_owned();
    f.deliver(&[
        message("p-ok", &patch(&urn, json!({"cloudCover": 50}), Value::Null), &[("regards.request.type", "PATCH")]),
        message("p-bad", &patch(&urn, json!({"cloudCover": "high"}), Value::Null), &[("regards.request.type", "PATCH")]),
    ])
    .await;
    let events = f.responses().await;
    assert_eq!(states(&events, "p-ok"), vec!["GRANTED", "SUCCESS"]);
    assert_eq!(states(&events, "p-bad"), vec!["DENIED"]);
    assert_eq!(f.feature(&urn).await.unwrap()["feature"]["properties"]["cloudCover"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_counters_count_each_request_once_under_concurrent_handlers() {
    let f = fixture().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let ingest = f.ingest.clone();
        let m = message(&format!("c{i}"), &creation(&format!("p{i}")).to_string(), &[]);
        tasks.push(tokio::spawn(async move {
            ingest.handle(LambdaEvent::new(sqs_event("feature-high", &[m]).unwrap(), Context::default())).await.unwrap()
        }));
    }
    futures::future::join_all(tasks).await;
    f.deliver(&[message("c0", &creation("p0").to_string(), &[])]).await;
    let mut bad = creation("bad");
    bad["feature"]["entityType"] = json!("THING");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    f.deliver(&[
        message("denied", &bad.to_string(), &[]),
        message("parked", &creation("later").to_string(), &[("regards.request.date", &later)]),
    ])
    .await;
    let events = f.responses().await;
    let urn = |p: &str| events.iter().find(|e| e["id"] == p && e["state"] == "SUCCESS").unwrap()["urn"].as_str().unwrap().to_owned();
    f.deliver(&[
        message("patch", &patch(&urn("p1"), json!({"k": 1}), Value::Null), &[("regards.request.type", "PATCH")]),
        message("delete", &json!({"urn": urn("p2")}).to_string(), &[("regards.request.type", "DELETION")]),
    ])
    .await;
    let counters =
        granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "s2-ingest-chain", "2026-11-23").await.unwrap().unwrap();
    let expected = json!({
        "referencingRequests": 13, "referencedProducts": 12, "runningReferencingRequests": 1, "deniedReferencingRequests": 1,
        "inErrorReferencingRequests": 0,
        "updateRequests": 1, "updatedProducts": 1, "runningUpdateRequests": 0, "deniedUpdateRequests": 0, "inErrorUpdateRequests": 0,
        "deleteRequests": 1, "deletedProducts": 1, "runningDeleteRequests": 0, "deniedDeleteRequests": 0, "inErrorDeleteRequests": 0,
        "notifyRequests": 0, "notifyProducts": 0, "runningNotifyRequests": 0, "deniedNotifyRequests": 0, "inErrorNotifyRequests": 0
    });
    assert_eq!(Value::Object(counters), expected);
}

#[tokio::test]
async fn invalid_geometry_is_denied_naming_its_path() {
    let f = fixture().await;
    let mut bad = creation("geo");
    bad["feature"]["geometry"] = json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]});
    bad["feature"]["bbox"] = json!([0, 5, 1, 1]);
    f.deliver(&[message("g1", &bad.to_string(), &[])]).await;
    let events = f.responses().await;
    assert_eq!(states(&events, "g1"), vec!["DENIED"]);
    let errors = events[0]["errors"].to_string();
    assert!(errors.contains("feature.geometry.coordinates[0]") && errors.contains("feature.bbox"), "{errors}");
    assert!(f.versions("geo").await.is_empty());
}

#[tokio::test]
async fn supplied_urns_update_if_exists_and_override_follow_regards_rules() {
    let f = fixture().await;
    f.deliver(&[message("c1", &creation("product-0001").to_string(), &[])]).await;
    let with_urn = |urn: &str, update: bool, props: Value| {
        let mut c = creation("product-0001");
        c["feature"]["urn"] = json!(urn);
        c["feature"]["properties"] = props;
        c["metadata"]["updateIfExists"] = json!(update);
        c.to_string()
    };
    let v = |n: u32| P1.replace(":V1", &format!(":V{n}"));
    f.deliver(&[message("exists", &with_urn(P1, false, json!({})), &[])]).await;
    f.deliver(&[message("update", &with_urn(P1, true, json!({"patched": true})), &[])]).await;
    f.deliver(&[message("v5", &with_urn(&v(5), false, json!({})), &[])]).await;
    f.deliver(&[message("v3", &with_urn(&v(3), false, json!({})), &[])]).await;
    f.deliver(&[message("v1000", &with_urn(&v(1000), false, json!({})), &[])]).await;
    f.deliver(&[message("other", &with_urn("URN:FEATURE:DATA:granary:5ff1f47c-ce6c-3f5b-bb7f-e130130089ed:V9", false, json!({})), &[])])
        .await;
    let events = f.responses().await;
    let denied_with = |id: &str, text: &str| {
        let e = events.iter().find(|e| e["requestId"] == id).unwrap_or_else(|| panic!("no event for {id}"));
        assert_eq!(e["state"], "DENIED", "{id}: {e}");
        assert!(e["errors"].to_string().contains(text), "{id}: {e}");
    };
    denied_with("exists", "already exists");
    assert_eq!(states(&events, "update"), vec!["GRANTED", "SUCCESS"]);
    assert!(events.iter().filter(|e| e["requestId"] == "update").all(|e| e["type"] == "PATCH"), "updateIfExists makes it a patch");
    assert_eq!(f.feature(P1).await.unwrap()["feature"]["properties"]["patched"], true);
    assert_eq!(states(&events, "v5"), vec!["GRANTED", "SUCCESS"], "a supplied version after the latest is taken");
    denied_with("v3", "not after the latest version 5");
    denied_with("v1000", "1000");
    denied_with("other", "is not a URN of providerId");
    let versions: Vec<String> = f.versions("product-0001").await.into_iter().map(|(u, _)| u).collect();
    assert_eq!(versions, vec![v(1), v(5)]);

    let mut over = creation("product-0001");
    over["metadata"]["override"] = json!(true);
    f.deliver(&[message("override", &over.to_string(), &[])]).await;
    let versions = f.versions("product-0001").await;
    assert_eq!(versions, vec![(v(1), false), (v(6), true)], "override replaces the latest version in the same transaction");
}

impl Fixture {
    /// Runs delayed-release and delivers what it sent back to the feature queues; returns how many
    /// requests went back.
    async fn release_and_deliver(&self) -> usize {
        let released = delayed_release::DelayedRelease::new(self.backend.clone(), &self.config).release_due().await.unwrap();
        for queue in self.config.feature_queues.clone() {
            for m in self.take(&queue).await {
                let attrs: Vec<(&str, &str)> = m.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let failed = self.deliver(&[message(&format!("{}-released", m.message_id), &m.body, &attrs)]).await;
                assert!(failed.is_empty(), "released request failed: {failed:?}");
            }
        }
        released
    }
}

#[tokio::test]
async fn changes_of_a_feature_whose_creation_is_parked_wait_behind_it() {
    use granary_ports::Clock;
    let clock = Arc::new(granary_ports::ManualClock::starting_now());
    let f = fixture_with_clock(clock.clone()).await;
    let in_1h = (clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    let typed = |kind: &'static str, id: &'static str| [("regards.request.type", kind), ("regards.request.id", id)];
    // The creation of product-0001 is dated an hour ahead; its patch and a deletion come at once.
    f.deliver(&[message("c1", &creation("product-0001").to_string(), &[("regards.request.id", "c1"), ("regards.request.date", &in_1h)])])
        .await;
    f.deliver(&[message("p1", &patch(P1, json!({"cloudCover": 7}), Value::Null), &typed("PATCH", "p1"))]).await;
    let events = f.responses().await;
    assert_eq!(states(&events, "p1"), vec!["GRANTED"], "the patch is granted and waits: {events:?}");
    let waiting = f.request("p1").await;
    assert_eq!((waiting["step"].as_str(), waiting["waitingFor"].as_str()), (Some("LOCAL_DELAYED"), Some("c1")));

    // Nothing moves before the creation's date.
    clock.advance(chrono::Duration::minutes(59));
    assert_eq!(f.release_and_deliver().await, 0);
    assert!(f.feature(P1).await.is_none());

    // At the date the creation runs, then the patch applies on the created feature.
    clock.advance(chrono::Duration::minutes(2));
    assert_eq!(f.release_and_deliver().await, 2, "the creation and the patch behind it");
    let mut rounds = 0;
    while f.request("p1").await["state"] != "SUCCESS" {
        rounds += 1;
        assert!(rounds < 5, "the patch never applied: {}", f.request("p1").await);
        clock.advance(chrono::Duration::seconds(2));
        f.release_and_deliver().await;
    }
    assert_eq!(f.feature(P1).await.unwrap()["feature"]["properties"]["cloudCover"], 7, "patched after its creation");
    let events = f.responses().await;
    assert_eq!(states(&events, "c1"), vec!["SUCCESS"]);
    assert_eq!(states(&events, "p1"), vec!["SUCCESS"], "GRANTED went out once, when it was parked");
    let session = granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "s2-ingest-chain", "2026-11-23").await.unwrap();
    let session = session.expect("the creation's session");
    assert_eq!((session["updateRequests"].as_i64(), session["runningUpdateRequests"].as_i64()), (Some(1), Some(0)));
    assert_eq!(session["updatedProducts"], 1);
}

#[tokio::test]
async fn a_change_waiting_behind_a_failed_creation_is_denied() {
    use granary_ports::Clock;
    let clock = Arc::new(granary_ports::ManualClock::starting_now());
    let f = fixture_with_clock(clock.clone()).await;
    let in_1h = (clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    let with_urn = |v: u32| {
        let mut c = creation("product-0001");
        c["feature"]["urn"] = json!(P1.replace(":V1", &format!(":V{v}")));
        c.to_string()
    };
    // A creation naming V5, dated ahead; the deletion of V5 waits behind it.
    f.deliver(&[message("c5", &with_urn(5), &[("regards.request.id", "c5"), ("regards.request.date", &in_1h)])]).await;
    let v5 = P1.replace(":V1", ":V5");
    f.deliver(&[message("d5", &json!({"urn": v5, "priority": "LOW"}).to_string(), &[("regards.request.type", "DELETION")])]).await;
    assert_eq!(f.request("d5").await["waitingFor"], "c5");
    // Meanwhile V6 is created, so V5 comes too late and is denied when released.
    f.deliver(&[message("c6", &with_urn(6), &[("regards.request.id", "c6")])]).await;
    clock.advance(chrono::Duration::minutes(61));
    f.release_and_deliver().await;
    assert_eq!(f.request("c5").await["state"], "DENIED");
    let mut rounds = 0;
    while f.request("d5").await["state"] == "GRANTED" {
        rounds += 1;
        assert!(rounds < 5, "the deletion never ended: {}", f.request("d5").await);
        clock.advance(chrono::Duration::seconds(2));
        f.release_and_deliver().await;
    }
    // With its creation denied the deletion finds nothing: ALREADY_DELETED, as REGARDS answers a
    // deletion of an absent feature.
    let d5 = f.request("d5").await;
    assert_eq!((d5["state"].as_str(), d5["action"].as_str()), (Some("SUCCESS"), Some("ALREADY_DELETED")));
    assert!(f.feature(&P1.replace(":V1", ":V6")).await.is_some());
    let session = granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "s2-ingest-chain", "2026-11-23").await.unwrap();
    let session = session.unwrap();
    assert_eq!((session["deleteRequests"].as_i64(), session["runningDeleteRequests"].as_i64()), (Some(1), Some(0)), "{session:?}");
    assert_eq!(session["runningReferencingRequests"], 0, "{session:?}");
}

#[tokio::test]
async fn notification_requests_hand_the_feature_to_the_notification_queue_once() {
    let f = fixture().await;
    f.deliver(&[message("c1", &creation("product-0001").to_string(), &[])]).await;
    f.responses().await;
    let notify = |urn: &str, extra: Value| {
        let mut body = json!({"urn": urn, "priority": "HIGH"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let typed = [("regards.request.type", "NOTIFICATION"), ("regards.request.owner", "operator")];
    let n1 = message("n1", &notify(P1, json!({"recipients": ["catalog"]})), &typed);
    assert!(f.deliver(std::slice::from_ref(&n1)).await.is_empty());
    // The same message again: no second notification, no second event.
    f.deliver(&[n1]).await;
    let notifications = f.take("feature-notification").await;
    assert_eq!(notifications.len(), 1, "{notifications:?}");
    let n: Value = serde_json::from_str(&notifications[0].body).unwrap();
    assert_eq!(
        n["metadata"],
        json!({"action": "NOTIFIED", "sessionOwner": "s2-ingest-chain", "session": "2026-11-23", "requestId": "n1", "requestOwner": "operator"})
    );
    assert_eq!((n["payload"]["urn"].as_str(), n["payload"]["id"].as_str()), (Some(P1), Some("product-0001")));
    assert_eq!(n["recipients"], json!(["catalog"]));
    assert_eq!(notifications[0].attributes.get("granary.event.id").map(String::as_str), Some(format!("{P1}:NOTIFIED:n1").as_str()));
    let events = f.responses().await;
    assert_eq!(states(&events, "n1"), vec!["GRANTED", "SUCCESS"]);
    assert!(events.iter().all(|e| e["type"] == "NOTIFICATION"), "{events:?}");
    assert_eq!(f.request("n1").await["action"], "NOTIFIED");

    // Unknown URN, missing priority, bad recipient label: each denied with its errors, nothing sent.
    f.deliver(&[
        message("n2", &notify(&P1.replace(":V1", ":V2"), json!({})), &typed),
        message("n3", &json!({"urn": P1}).to_string(), &typed),
        message("n4", &notify("URN:nope", json!({"recipients": [""]})), &typed),
    ])
    .await;
    let events = f.responses().await;
    for (id, expected) in [("n2", "no feature"), ("n3", "missing field `priority`"), ("n4", "urn:")] {
        let e = events.iter().find(|e| e["requestId"] == id).unwrap_or_else(|| panic!("no answer to {id}: {events:?}"));
        assert_eq!(e["state"], "DENIED");
        assert!(e["errors"][0].as_str().unwrap().contains(expected), "{id}: {e}");
    }
    assert_eq!(events.iter().find(|e| e["requestId"] == "n4").unwrap()["errors"].as_array().unwrap().len(), 2, "every error listed");
    assert!(f.take("feature-notification").await.is_empty());
    let session = granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "s2-ingest-chain", "2026-11-23").await.unwrap();
    assert_eq!(session.unwrap()["notifyRequests"], 1);
}

impl Fixture {
    /// Delivers `messages` as the dead-letter queue's event source mapping does.
    async fn deliver_dead_letters(&self, messages: &[ReceivedMessage]) -> Vec<String> {
        let event = sqs_event("feature-dead-letter", messages).unwrap();
        let response = self.ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap();
        response.batch_item_failures.into_iter().map(|f| f.item_identifier).collect()
    }

    async fn session(&self) -> serde_json::Map<String, Value> {
        granary_stores::sessions::SessionReader::new("requests").get(&self.backend, "s2-ingest-chain", "2026-11-23").await.unwrap().unwrap()
    }
}

#[tokio::test]
async fn dead_letters_become_requests_in_error_that_an_admin_retries() {
    let f = fixture().await;
    let recovery = granary_stores::recovery::Recovery::new("requests", "feature-response");
    // A creation that failed on every delivery lands in the dead-letter queue.
    let dead = message("m1", &creation("product-0001").to_string(), &[("regards.request.id", "r1"), ("regards.request.type", "CREATION")]);
    assert!(f.deliver_dead_letters(std::slice::from_ref(&dead)).await.is_empty());
    let r1 = f.request("r1").await;
    assert_eq!(
        (r1["state"].as_str(), r1["step"].as_str(), r1["providerId"].as_str()),
        (Some("ERROR"), Some("LOCAL_ERROR"), Some("product-0001"))
    );
    assert!(r1["errors"][0].as_str().unwrap().contains("dead-letter queue"), "{r1}");
    let events = f.responses().await;
    assert_eq!(states(&events, "r1"), vec!["ERROR"]);
    assert!(f.versions("product-0001").await.is_empty(), "nothing created");
    assert_eq!(
        (f.session().await["referencingRequests"].as_i64(), f.session().await["inErrorReferencingRequests"].as_i64()),
        (Some(1), Some(1))
    );

    // The same dead letter again changes nothing.
    f.deliver_dead_letters(&[dead]).await;
    assert!(f.responses().await.is_empty());

    // Retried: GRANTED again, released by the schedule, then processed as any request.
    let (outcome, _) = recovery.retry(&f.backend, "r1").await.unwrap();
    assert_eq!(outcome, granary_stores::recovery::AdminOutcome::Done);
    assert_eq!(
        recovery.retry(&f.backend, "r1").await.unwrap().0,
        granary_stores::recovery::AdminOutcome::NotInError(granary_domain::RequestState::Granted),
        "retried once"
    );
    assert_eq!(f.release_and_deliver().await, 1);
    assert_eq!(f.request("r1").await["state"], "SUCCESS");
    assert_eq!(f.versions("product-0001").await.len(), 1);
    let session = f.session().await;
    assert_eq!(
        [
            &session["referencingRequests"],
            &session["inErrorReferencingRequests"],
            &session["runningReferencingRequests"],
            &session["referencedProducts"]
        ],
        [1, 0, 0, 1],
        "{session:?}"
    );

    // A dead letter of a request processed meanwhile is dropped, and a success cannot be deleted.
    let late = message("m2", &creation("product-0001").to_string(), &[("regards.request.id", "r1"), ("regards.request.type", "CREATION")]);
    f.deliver_dead_letters(&[late]).await;
    assert_eq!(f.request("r1").await["state"], "SUCCESS");
    assert_eq!(
        recovery.delete(&f.backend, "r1").await.unwrap(),
        granary_stores::recovery::AdminOutcome::NotInError(granary_domain::RequestState::Success)
    );
    assert_eq!(recovery.delete(&f.backend, "nope").await.unwrap(), granary_stores::recovery::AdminOutcome::Unknown);
}

#[tokio::test]
async fn a_remote_step_past_its_deadline_moves_to_its_error_step() {
    use granary_ports::Clock;
    use granary_stores::recovery::{AdminOutcome, Recovery, enter_remote_step};
    let clock = Arc::new(granary_ports::ManualClock::starting_now());
    let f = fixture_with_clock(clock.clone()).await;
    let recovery = Recovery::new("requests", "feature-response");
    let release = delayed_release::DelayedRelease::new(f.backend.clone(), &f.config);
    // A creation dated ahead is parked (GRANTED, counted as running); then, as file storage will do,
    // it waits on the storage service for at most ten minutes.
    let in_1h = (clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    f.deliver(&[message("c1", &creation("product-0001").to_string(), &[("regards.request.id", "c1"), ("regards.request.date", &in_1h)])])
        .await;
    f.responses().await;
    let now = clock.now_ms();
    let parked = granary_stores::requests::Parked {
        due_at: 0,
        queue: "feature-high".into(),
        body: creation("product-0001").to_string(),
        attributes: [("regards.request.id".to_owned(), "c1".to_owned())].into(),
    };
    let key = granary_ports::Key::new("R#c1", "R");
    f.backend
        .table
        .update("requests", &key, enter_remote_step("REMOTE_STORAGE_REQUESTED", now, now + 600_000, &parked), None)
        .await
        .unwrap();

    clock.advance(chrono::Duration::minutes(9));
    assert_eq!(release.expire_remote_steps().await.unwrap(), 0, "not before the deadline");
    assert_eq!(f.request("c1").await["step"], "REMOTE_STORAGE_REQUESTED");
    clock.advance(chrono::Duration::minutes(2));
    assert_eq!(release.expire_remote_steps().await.unwrap(), 1);
    assert_eq!(release.expire_remote_steps().await.unwrap(), 0, "once");
    let c1 = f.request("c1").await;
    assert_eq!((c1["state"].as_str(), c1["step"].as_str()), (Some("ERROR"), Some("REMOTE_STORAGE_ERROR")));
    assert!(c1["errors"][0].as_str().unwrap().contains("no answer before the deadline (660 s"), "{c1}");
    let events = f.responses().await;
    assert_eq!(states(&events, "c1"), vec!["ERROR"]);
    let session = f.session().await;
    assert_eq!((session["runningReferencingRequests"].as_i64(), session["inErrorReferencingRequests"].as_i64()), (Some(0), Some(1)));

    // Deleted by an admin: gone, no longer counted in error.
    assert_eq!(recovery.delete(&f.backend, "c1").await.unwrap(), AdminOutcome::Done);
    assert!(f.backend.table.get("requests", &key).await.unwrap().is_none());
    assert_eq!(f.session().await["inErrorReferencingRequests"], 0);
}

#[tokio::test]
async fn every_kind_of_bad_input_is_denied_with_all_its_errors() {
    let f = fixture().await;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = creation("bad-input");
        edit(&mut c);
        c.to_string()
    };
    let typed = |kind: &'static str| vec![("regards.request.type", kind)];
    let big = with(&|c| c["feature"]["properties"]["blob"] = json!("x".repeat(3 * 1024 * 1024)));
    // (message, body, attributes, every error expected, each by a piece of its text)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        ("malformed", "{\"metadata\": ".into(), typed("CREATION"), vec!["not valid JSON"]),
        (
            "missing-model",
            with(&|c| {
                c["feature"].as_object_mut().unwrap().remove("model");
            }),
            typed("CREATION"),
            vec!["feature.model: required"],
        ),
        (
            "wrong-types",
            with(&|c| {
                c["feature"]["properties"] = json!(5);
                c["metadata"]["override"] = json!("yes");
            }),
            typed("CREATION"),
            vec!["metadata.override:", "feature.properties: must be an object"],
        ),
        ("unknown-model", with(&|c| c["feature"]["model"] = json!("NOPE")), typed("CREATION"), vec!["unknown model \"NOPE\""]),
        ("long-id", with(&|c| c["feature"]["id"] = json!("p".repeat(101))), typed("CREATION"), vec!["feature.id: longer than 100"]),
        ("bad-urn", patch("URN:FEATURE:DATA:granary:not-a-uuid:V1", json!({}), Value::Null), typed("PATCH"), vec!["feature.urn:"]),
        ("version-1000", with(&|c| c["feature"]["urn"] = json!(P1.replace(":V1", ":V1000"))), typed("CREATION"), vec!["feature.urn:"]),
        (
            "priority-and-type",
            with(&|c| {
                c["metadata"]["priority"] = json!("URGENT");
                c["feature"]["entityType"] = json!("THING");
            }),
            typed("CREATION"),
            vec!["metadata.priority: \"URGENT\" is not LOW, NORMAL or HIGH", "feature.entityType:"],
        ),
        ("deletion-priority", json!({"urn": P1, "priority": "SOON"}).to_string(), typed("DELETION"), vec!["priority: \"SOON\""]),
        ("several-mb", big, typed("CREATION"), vec!["more than the 262144"]),
        (
            "bad-files",
            with(&|c| {
                c["feature"]["files"] = json!([
                    {"locations": [], "attributes": {"dataType": "RAWDATA", "mimeType": "application/zip", "filename": "a.zip",
                                                     "filesize": 10, "algorithm": "MD5", "checksum": "5d41402abc4b2a76b9719d911017c592"}},
                    {"locations": [{"url": "s3://b/k"}], "attributes": {"dataType": "RAW", "mimeType": "application/zip",
                                                     "filename": "b.zip", "algorithm": "SHA-256", "checksum": "abc"}}
                ]);
            }),
            typed("CREATION"),
            vec![
                "feature.files[0].locations: at least one location",
                "feature.files[1].attributes.dataType: \"RAW\"",
                "feature.files[1].attributes.filesize: required",
                "feature.files[1].attributes.checksum: \"abc\" is not a \"SHA-256\" checksum",
            ],
        ),
    ];
    let messages: Vec<ReceivedMessage> = cases.iter().map(|(id, body, attrs, _)| message(id, body, attrs)).collect();
    let mut batch = messages.clone();
    batch.push(message("good", &creation("good").to_string(), &[]));
    for chunk in batch.chunks(10) {
        assert!(f.deliver(chunk).await.is_empty(), "bad input is answered, not retried");
    }
    let events = f.responses().await;
    for (id, _, _, expected) in &cases {
        let e = events.iter().find(|e| e["requestId"] == *id).unwrap_or_else(|| panic!("no answer to {id}"));
        assert_eq!(e["state"], "DENIED", "{id}: {e}");
        let errors: Vec<&str> = e["errors"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(errors.len(), expected.len(), "{id}: every error and only those: {errors:?}");
        for piece in expected {
            assert!(errors.iter().any(|x| x.contains(piece)), "{id}: no error with {piece:?} in {errors:?}");
        }
    }
    assert_eq!(states(&events, "good"), vec!["GRANTED", "SUCCESS"], "the rest of the batch goes on");
}

/// The table of a backend, counting the transactions committed through it, failing reads of the
/// recipients while `recipients_down` is set, and saying it serializes transactions while `serial` is.
#[derive(Default)]
struct CountingTable {
    inner: Option<Arc<dyn granary_ports::Table>>,
    transactions: std::sync::atomic::AtomicUsize,
    recipients_down: std::sync::atomic::AtomicBool,
    serial: std::sync::atomic::AtomicBool,
}

impl CountingTable {
    fn over(inner: Arc<dyn granary_ports::Table>) -> Self {
        Self { inner: Some(inner), ..Self::default() }
    }

    fn inner(&self) -> &dyn granary_ports::Table {
        self.inner.as_deref().expect("a table to count")
    }
}

#[async_trait::async_trait]
impl granary_ports::Table for CountingTable {
    fn serializes_transactions(&self) -> bool {
        self.serial.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn take_sent_with_commit(&self, event_id: &str) -> bool {
        self.inner().take_sent_with_commit(event_id)
    }
    async fn get(&self, table: &str, key: &granary_ports::Key) -> granary_ports::PortResult<Option<granary_ports::Item>> {
        self.inner().get(table, key).await
    }
    async fn put(&self, table: &str, item: granary_ports::Item, cond: Option<granary_ports::Cond>) -> granary_ports::PortResult<()> {
        self.inner().put(table, item, cond).await
    }
    async fn update(
        &self,
        table: &str,
        key: &granary_ports::Key,
        updates: Vec<granary_ports::Update>,
        cond: Option<granary_ports::Cond>,
    ) -> granary_ports::PortResult<granary_ports::Item> {
        self.inner().update(table, key, updates, cond).await
    }
    async fn delete(
        &self,
        table: &str,
        key: &granary_ports::Key,
        cond: Option<granary_ports::Cond>,
    ) -> granary_ports::PortResult<Option<granary_ports::Item>> {
        self.inner().delete(table, key, cond).await
    }
    async fn transact(&self, ops: Vec<granary_ports::TxOp>) -> granary_ports::PortResult<()> {
        let result = self.inner().transact(ops).await;
        if result.is_ok() {
            self.transactions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        result
    }
    async fn query(&self, query: Query) -> granary_ports::PortResult<granary_ports::Page> {
        if self.recipients_down.load(std::sync::atomic::Ordering::SeqCst) && query.partition == "RECIPIENTS" {
            return Err(granary_ports::PortError::Unavailable("throttled".into()));
        }
        self.inner().query(query).await
    }
}

#[tokio::test]
async fn a_batch_whose_recipients_cannot_be_read_comes_back_rather_than_going_untold() {
    let f = fixture().await;
    let recipient = granary_domain::dissemination::Recipient {
        target: granary_domain::dissemination::Target::Queue { queue: "mirror".into() },
        ack_required: false,
        blocking: false,
        filter: Default::default(),
        secret: None,
    };
    granary_stores::dissemination::RecipientStore::new("features").put(&f.backend, "mirror", &recipient, "admin").await.unwrap();
    let table = Arc::new(CountingTable::over(f.backend.table.clone()));
    table.recipients_down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut backend = f.backend.clone();
    backend.table = table.clone();
    let ingest = FeatureIngest::new(backend, f.config.clone());
    let batch = vec![message("m1", &creation("told").to_string(), &[("regards.request.id", "r-told")])];
    let deliver = || async {
        let event = sqs_event("feature-high", &batch).unwrap();
        ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap().batch_item_failures
    };
    assert_eq!(deliver().await.len(), 1, "the message comes back");
    assert!(f.responses().await.is_empty(), "nothing was recorded");
    table.recipients_down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(deliver().await.is_empty());
    assert_eq!(states(&f.responses().await, "r-told"), vec!["GRANTED", "SUCCESS"]);
    let notified = f.backend.queue.receive(&f.config.notification_queue, 10, None, Duration::ZERO).await.unwrap();
    assert_eq!(notified.len(), 1, "the creation was notified");
}

#[tokio::test]
async fn a_batch_of_creations_commits_in_one_transaction_and_one_by_one_when_it_cannot() {
    let f = fixture().await;
    let counting = Arc::new(CountingTable::over(f.backend.table.clone()));
    let mut backend = f.backend.clone();
    backend.table = counting.clone();
    let ingest = FeatureIngest::new(backend, f.config.clone());
    let deliver = |messages: Vec<ReceivedMessage>| {
        let ingest = ingest.clone();
        async move {
            let event = sqs_event("feature-high", &messages).unwrap();
            ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap().batch_item_failures
        }
    };
    let creations = |from: usize, to: usize| -> Vec<ReceivedMessage> {
        (from..to)
            .map(|i| message(&format!("m{i}"), &creation(&format!("p{i}")).to_string(), &[("regards.request.id", &format!("r{i}"))]))
            .collect()
    };
    let committed = || counting.transactions.load(std::sync::atomic::Ordering::SeqCst);

    // Ten new creations: the ten features, their records, events and session counters in one
    // transaction, which sends the events too (the embedded backend's queues join its transactions,
    // so there are no outbox rows to delete after).
    assert!(deliver(creations(0, 10)).await.is_empty());
    assert_eq!(committed(), 1, "one transaction for the creations and their events");
    let events = f.responses().await;
    for i in 0..10 {
        assert_eq!(states(&events, &format!("r{i}")), vec!["GRANTED", "SUCCESS"], "request r{i}");
        assert_eq!(f.versions(&format!("p{i}")).await.len(), 1);
    }
    let sessions = granary_stores::sessions::SessionReader::new("requests");
    let counters = sessions.get(&f.backend, "s2-ingest-chain", "2026-11-23").await.unwrap().unwrap();
    assert_eq!((counters["referencingRequests"].clone(), counters["referencedProducts"].clone()), (json!(10), json!(10)));

    // A batch holding a redelivered message: the whole transaction is refused, and each message then
    // goes alone, so the new ones are created and the redelivered one changes nothing.
    let mut mixed = creations(10, 15);
    mixed.insert(2, creations(3, 4).remove(0));
    assert!(deliver(mixed).await.is_empty());
    let events = f.responses().await;
    assert!(states(&events, "r3").is_empty(), "nothing more for a redelivery: {events:?}");
    for i in 10..15 {
        assert_eq!(states(&events, &format!("r{i}")), vec!["GRANTED", "SUCCESS"], "request r{i}");
    }
    assert_eq!(f.versions("p3").await.len(), 1, "no second version of a redelivered creation");
    let counters = sessions.get(&f.backend, "s2-ingest-chain", "2026-11-23").await.unwrap().unwrap();
    assert_eq!(counters["referencingRequests"], json!(15), "each request counted once");

    // Order is kept around what cannot join a batch: a creation, a patch of it, a creation.
    let before = committed();
    let urn = f.versions("p0").await[0].0.clone();
    let batch = vec![
        creations(20, 21).remove(0),
        message("patch", &patch(&urn, json!({"k": 1}), Value::Null), &[("regards.request.type", "PATCH"), ("regards.request.id", "rp")]),
        creations(21, 22).remove(0),
        creations(22, 23).remove(0),
    ];
    assert!(deliver(batch).await.is_empty());
    let events = f.responses().await;
    for id in ["r20", "rp", "r21", "r22"] {
        assert_eq!(states(&events, id), vec!["GRANTED", "SUCCESS"], "request {id}");
    }
    // r20 alone, the patch, then r21 and r22 together: three transactions.
    assert_eq!(committed() - before, 3);

    // Batches of 25 (the NORMAL and LOW mappings gather up to 100): ten creations to a transaction;
    // the transactions one after the other (as on DynamoDB),
    // or at once on a table that serializes them (as the embedded one).
    for (serial, from) in [(false, 30), (true, 55)] {
        counting.serial.store(serial, std::sync::atomic::Ordering::SeqCst);
        let before = committed();
        assert!(deliver(creations(from, from + 25)).await.is_empty());
        let events = f.responses().await;
        for i in from..from + 25 {
            assert_eq!(states(&events, &format!("r{i}")), vec!["GRANTED", "SUCCESS"], "request r{i}");
            assert_eq!(f.versions(&format!("p{i}")).await.len(), 1);
        }
        assert_eq!(committed() - before, 3, "creations of 10, 10 and 5 (serial {serial})");
    }
    let counters = sessions.get(&f.backend, "s2-ingest-chain", "2026-11-23").await.unwrap().unwrap();
    assert_eq!(counters["referencingRequests"], json!(15 + 3 + 50), "each creation counted once (the patch apart)");
}

#[tokio::test]
async fn changed_features_are_notified_only_while_notification_is_on_and_someone_may_receive() {
    use granary_domain::dissemination::{Recipient, RecipientFilter, Target};
    use granary_stores::dissemination::RecipientStore;
    let f = fixture().await;
    let notifications = |f: &Fixture| {
        let backend = f.backend.clone();
        async move {
            let got = backend.queue.receive("feature-notification", 10, None, Duration::ZERO).await.unwrap();
            got.iter()
                .map(|m| (m.attributes["granary.event.id"].clone(), serde_json::from_str::<Value>(&m.body).unwrap()))
                .collect::<Vec<_>>()
        }
    };
    let create =
        |id: &str, p: &str| message(id, &creation(p).to_string(), &[("regards.request.id", id), ("regards.request.type", "CREATION")]);
    f.deliver(&[create("n1", "quiet")]).await;
    assert!(notifications(&f).await.is_empty(), "no recipient: nothing to notify");

    let store = RecipientStore::new("features");
    let recipient = Recipient {
        target: Target::Queue { queue: "mirror".into() },
        ack_required: true,
        blocking: false,
        filter: RecipientFilter::default(),
        secret: None,
    };
    store.put(&f.backend, "mirror", &recipient, "admin").await.unwrap();
    // A new runner reads the recipients at once (the cache is per process and starts empty).
    let ingest = FeatureIngest::new(f.backend.clone(), f.config.clone());
    let event = sqs_event("feature-high", &[create("n2", "loud")]).unwrap();
    ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap();
    let got = notifications(&f).await;
    assert_eq!(got.len(), 1);
    let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("loud"));
    assert_eq!(got[0].0, format!("{urn}:CREATED:n2"), "deterministic id: URN, action, request");
    assert_eq!(got[0].1["metadata"]["action"], "CREATED");
    assert_eq!(got[0].1["metadata"]["sessionOwner"], "s2-ingest-chain");
    assert_eq!(got[0].1["payload"]["urn"], urn.as_str());

    // Turned off by an admin: nothing more.
    store.set_active(&f.backend, false, "admin").await.unwrap();
    let ingest = FeatureIngest::new(f.backend.clone(), f.config.clone());
    let event = sqs_event("feature-high", &[create("n3", "silenced")]).unwrap();
    ingest.handle(LambdaEvent::new(event, Context::default())).await.unwrap();
    assert!(notifications(&f).await.is_empty());
}

#[tokio::test]
async fn files_whose_source_granary_may_not_read_are_denied_before_anything_is_staged() {
    let dir = tempfile::tempdir().unwrap();
    let resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).unwrap();
    let embedded = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap();
    let backend = embedded.backend();
    define_model(&backend, "S2_L1C", &json!({"type": "object", "x-granary-type": "DATA"})).await;
    // The cloud's settings: listed hosts and buckets only, no internal address.
    let config = Config::from_lookup(|name| match name {
        "GRANARY_OUTBOUND_HOSTS" => Some("files.example.invalid".into()),
        "GRANARY_OUTBOUND_INTERNAL" => Some(String::new()),
        "GRANARY_STORAGE_SOURCE_BUCKETS" => Some("incoming".into()),
        _ => None,
    });
    let f = Fixture { _dir: dir, embedded, backend: backend.clone(), config: config.clone(), ingest: FeatureIngest::new(backend, config) };
    let with_source = |id: &str, url: &str| {
        let mut c = creation(id);
        c["metadata"]["storages"] = json!([{"pluginBusinessId": "online"}]);
        c["feature"]["files"] = json!([{"locations": [{"url": url}], "attributes": {"dataType": "RAWDATA",
            "mimeType": "application/zip", "filename": "f.zip", "filesize": 3, "algorithm": "MD5",
            "checksum": "0123456789abcdef0123456789abcdef"}}]);
        c.to_string()
    };
    let cases = [
        ("evil", "https://evil.invalid/f.zip", "host evil.invalid is not one Granary may connect to"),
        ("metadata", "http://169.254.169.254/latest/meta-data/", "host 169.254.169.254 is not one"),
        ("bucket", "s3://someone-elses/f.zip", "bucket someone-elses is not one Granary may read files from"),
        ("gopher", "gopher://files.example.invalid/f.zip", "scheme gopher:// is not one Granary copies from"),
        ("ok", "https://files.example.invalid/f.zip", ""),
        ("ok-s3", "s3://incoming/f.zip", ""),
    ];
    let messages: Vec<_> = cases.iter().map(|(id, url, _)| message(id, &with_source(id, url), &[])).collect();
    assert!(f.deliver(&messages).await.is_empty());
    let events = f.responses().await;
    for (id, url, why) in cases {
        let first = events.iter().find(|e| e["requestId"] == id).unwrap_or_else(|| panic!("no answer to {id}"));
        if why.is_empty() {
            assert_eq!(first["state"], "GRANTED", "{url}: {first}");
        } else {
            assert_eq!(first["state"], "DENIED", "{url}: {first}");
            assert!(first["errors"].to_string().contains(why), "{url}: {first}");
        }
    }
    let staged = f.backend.queue.receive(&f.config.storage_jobs_queue, 10, None, Duration::ZERO).await.unwrap();
    assert!(staged.iter().all(|m| !m.body.contains("evil.invalid") && !m.body.contains("169.254")), "nothing refused was staged");
}
