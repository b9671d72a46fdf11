//! Notifications delivered to real recipients on the embedded backend: a local queue and a webhook on
//! 127.0.0.1 that checks the signature and fails for a while; acknowledgements; a recipient that never
//! recovers.

use dissemination::Dissemination;
use feature_ingest::FeatureIngest;
use granary_domain::dissemination::{Recipient, RecipientFilter, Target};
use granary_embedded::{Embedded, EmbeddedOptions};
use granary_lambda::Config;
use granary_lambda::sqs::sqs_event;
use granary_ports::{Backend, Key, OutgoingMessage, QueueSpec, ReceivedMessage};
use granary_stores::dissemination::{DisseminationLog, RecipientStore};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const SECRET: &str = "a webhook secret of some length";

struct Fixture {
    _dir: tempfile::TempDir,
    backend: Backend,
    config: Config,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut resources = granary_resources::from_template(granary_resources::TEMPLATE, |_| None).unwrap();
    resources.queues.push(QueueSpec::new("mirror"));
    resources.queues.push(QueueSpec::new("second"));
    let backend = Embedded::open(EmbeddedOptions::new(dir.path(), resources)).unwrap().backend();
    let model = json!({"type": "object", "x-granary-type": "DATA"});
    let compiled = granary_domain::model::compile_model("M", &model).unwrap();
    granary_stores::models::ModelStore::new("features").put(&backend, &model, &compiled, "admin").await.unwrap();
    Fixture { _dir: dir, backend, config: Config::defaults() }
}

fn recipient(target: Target, ack_required: bool) -> Recipient {
    Recipient { target, ack_required, blocking: false, filter: RecipientFilter::default(), secret: Some(SECRET.into()) }
}

impl Fixture {
    async fn create(&self, request_id: &str, provider_id: &str) {
        let body = json!({"metadata": {"sessionOwner": "o", "session": "s"},
            "feature": {"type": "Feature", "id": provider_id, "entityType": "DATA", "model": "M", "geometry": null, "properties": {}}});
        self.ingest(request_id, "CREATION", body).await;
    }

    /// Runs feature-ingest on one request of `kind` (REGARDS's request type) carrying `body`.
    async fn ingest(&self, request_id: &str, kind: &str, body: Value) {
        let msg = ReceivedMessage {
            message_id: request_id.into(),
            receipt_handle: format!("{request_id}.1"),
            body: body.to_string(),
            attributes: [("regards.request.id".to_owned(), request_id.to_owned()), ("regards.request.type".to_owned(), kind.to_owned())]
                .into(),
            receive_count: 1,
            sent_at_ms: 0,
        };
        let ingest = FeatureIngest::new(self.backend.clone(), self.config.clone());
        let r = ingest.handle(LambdaEvent::new(sqs_event("feature-high", &[msg]).unwrap(), Context::default())).await.unwrap();
        assert!(r.batch_item_failures.is_empty(), "ingest failed messages {:?}", r.batch_item_failures);
    }

    async fn take(&self, queue: &str) -> Vec<ReceivedMessage> {
        granary_testkit::drain(&self.backend, queue).await
    }

    /// Runs dissemination on the notification queue until it is empty (retries are not delayed here);
    /// how many messages it handled.
    async fn disseminate(&self, d: &Dissemination) -> usize {
        let mut handled = 0;
        for _ in 0..20 {
            let got = self.take("feature-notification").await;
            if got.is_empty() {
                return handled;
            }
            handled += got.len();
            let r = d.handle(LambdaEvent::new(sqs_event("feature-notification", &got).unwrap(), Context::default())).await.unwrap();
            assert!(r.batch_item_failures.is_empty());
        }
        panic!("the notification queue did not empty");
    }
}

#[tokio::test]
async fn every_recipient_gets_each_notification_once_and_a_failing_one_alone_is_retried() {
    let f = fixture().await;
    let (url, accepted, calls) = granary_testkit::webhook(SECRET, 2).await;
    let store = RecipientStore::new("features");
    store.put(&f.backend, "mirror", &recipient(Target::Queue { queue: "mirror".into() }, true), "admin").await.unwrap();
    store.put(&f.backend, "hook", &recipient(Target::Webhook { url }, false), "admin").await.unwrap();
    f.create("c1", "p1").await;
    let d = Dissemination::with_settings(f.backend.clone(), f.config.clone(), Duration::ZERO, 6, Duration::ZERO).unwrap();
    f.disseminate(&d).await;

    let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("p1"));
    let id = format!("{urn}:CREATED:c1");
    let mirror = f.take("mirror").await;
    assert_eq!(mirror.len(), 1, "the queue recipient got it once, not once per retry of the webhook");
    assert_eq!(mirror[0].attributes["granary.event.id"], id);
    let body: Value = serde_json::from_str(&mirror[0].body).unwrap();
    assert_eq!((body["metadata"]["action"].as_str(), body["payload"]["urn"].as_str()), (Some("CREATED"), Some(urn.as_str())));
    assert_eq!(*accepted.lock().unwrap(), vec![id.clone()], "the webhook accepted it once it recovered");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two failures, then one success");

    let log = DisseminationLog::new("features", "requests", "feature-response");
    let info = log.of(&f.backend, &urn).await.unwrap();
    assert_eq!(info.len(), 2);
    let hook = info.iter().find(|i| i.label == "hook").unwrap();
    assert_eq!(hook.ack_date, Some(hook.dissemination_date), "no acknowledgement needed: acknowledged when delivered");
    assert_eq!(info.iter().find(|i| i.label == "mirror").unwrap().ack_date, None);

    // Acknowledgements: recorded once, the first date kept; one for nothing sent is dead-lettered.
    let acks = acknowledgement::Acknowledgement::new(f.backend.clone(), f.config.clone());
    let ack = |i: usize, urn: &str, label: &str| {
        OutgoingMessage::new(json!({"urn": urn, "recipientLabel": label}).to_string()).attribute("n", i.to_string())
    };
    f.backend.queue.send_batch("feature-ack", vec![ack(1, &urn, "mirror"), ack(2, &urn, "mirror"), ack(3, &urn, "nobody")]).await.unwrap();
    let got = f.take("feature-ack").await;
    let r = acks.handle(LambdaEvent::new(sqs_event("feature-ack", &got).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    let mirror_info = log.of(&f.backend, &urn).await.unwrap().into_iter().find(|i| i.label == "mirror").unwrap();
    assert!(mirror_info.ack_date.is_some());
    let dead = f.take("feature-ack-dead-letter").await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].attributes[acknowledgement::ATTR_REASON].contains("recipient \"nobody\""));
}

#[tokio::test]
async fn a_recipient_that_never_recovers_ends_in_the_dead_letter_queue_and_its_request_in_error() {
    let f = fixture().await;
    let (url, accepted, _) = granary_testkit::webhook(SECRET, usize::MAX).await;
    let store = RecipientStore::new("features");
    store.put(&f.backend, "down", &recipient(Target::Webhook { url }, false), "admin").await.unwrap();
    f.create("c2", "p2").await;
    let d = Dissemination::with_settings(f.backend.clone(), f.config.clone(), Duration::ZERO, 3, Duration::ZERO).unwrap();
    f.disseminate(&d).await;
    assert!(accepted.lock().unwrap().is_empty());
    let dead = f.take("feature-notification-dead-letter").await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].attributes[dissemination::ATTR_REASON].contains("not delivered after 3 attempts: recipient down:"));
    let item = f.backend.table.get("requests", &Key::new("R#c2", "R")).await.unwrap().unwrap();
    assert_eq!((item.get_str("state"), item.get_str("step")), (Some("ERROR"), Some("REMOTE_NOTIFICATION_ERROR")));
}

#[tokio::test]
async fn in_the_cloud_a_webhook_on_an_internal_address_is_never_called() {
    let mut f = fixture().await;
    // The template's setting: no internal network is reachable.
    f.config.outbound = granary_domain::outbound::OutboundPolicy::parse(None, None, Some(""));
    let (url, accepted, calls) = granary_testkit::webhook(SECRET, 0).await;
    let store = RecipientStore::new("features");
    store.put(&f.backend, "internal", &recipient(Target::Webhook { url }, false), "admin").await.unwrap();
    f.create("c3", "p3").await;
    let d = Dissemination::with_settings(f.backend.clone(), f.config.clone(), Duration::ZERO, 6, Duration::ZERO).unwrap();
    assert_eq!(f.disseminate(&d).await, 1, "refused at the first attempt, not tried again");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no connection reached the webhook");
    assert!(accepted.lock().unwrap().is_empty());
    let dead = f.take("feature-notification-dead-letter").await;
    assert_eq!(dead.len(), 1);
    let reason = &dead[0].attributes[dissemination::ATTR_REASON];
    assert!(reason.starts_with("refused, not retried: recipient internal:"), "{reason}");
    assert!(reason.contains("loopback address Granary may not connect to"), "{reason}");
    assert_eq!(request_state(&f, "c3").await, ("ERROR".to_owned(), "REMOTE_NOTIFICATION_ERROR".to_owned()));
}

#[tokio::test]
async fn a_refused_webhook_is_given_up_at_once_while_a_failing_one_beside_it_is_retried() {
    let mut f = fixture().await;
    f.config.outbound = granary_domain::outbound::OutboundPolicy::parse(None, None, Some(""));
    let (refused_url, _, refused_calls) = granary_testkit::webhook(SECRET, 0).await;
    let store = RecipientStore::new("features");
    store.put(&f.backend, "internal", &recipient(Target::Webhook { url: refused_url }, false), "admin").await.unwrap();
    // A queue recipient that does not exist yet fails like an unreachable service: retried.
    store.put(&f.backend, "late", &recipient(Target::Queue { queue: "not-yet".into() }, false), "admin").await.unwrap();
    f.create("c4", "p4").await;
    let d = Dissemination::with_settings(f.backend.clone(), f.config.clone(), Duration::ZERO, 3, Duration::ZERO).unwrap();
    assert_eq!(f.disseminate(&d).await, 3, "the first attempt, then two more for the failing queue alone");
    assert_eq!(refused_calls.load(Ordering::SeqCst), 0);
    let dead = f.take("feature-notification-dead-letter").await;
    let reasons: Vec<&str> = dead.iter().map(|m| m.attributes[dissemination::ATTR_REASON].as_str()).collect();
    assert_eq!(dead.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("refused, not retried: recipient internal:")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("not delivered after 3 attempts: recipient late:")), "{reasons:?}");
    let labels: Vec<&str> = dead.iter().map(|m| m.attributes[dissemination::ATTR_RECIPIENTS].as_str()).collect();
    assert!(labels.contains(&"internal") && labels.contains(&"late"), "each copy names its own recipient: {labels:?}");
}

/// The state and step of request `id`.
async fn request_state(f: &Fixture, id: &str) -> (String, String) {
    let r = granary_stores::requests::RequestReader::new("requests").get(&f.backend, id).await.unwrap().unwrap();
    (r.state.as_str().to_owned(), r.step)
}

/// Session o/s's counter `name` (0 when absent).
async fn counter(f: &Fixture, name: &str) -> i64 {
    let counters = granary_stores::sessions::SessionReader::new("requests").get(&f.backend, "o", "s").await.unwrap().unwrap();
    counters.get(name).and_then(Value::as_i64).unwrap_or(0)
}

/// The ids of the SUCCESS responses sent so far, by request id.
async fn successes(f: &Fixture) -> Vec<String> {
    let mut ids: Vec<String> = f
        .take("feature-response")
        .await
        .iter()
        .map(|m| serde_json::from_str::<Value>(&m.body).unwrap())
        .filter(|b| b["state"] == "SUCCESS")
        .map(|b| b["requestId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_blocking_recipient_holds_requests_until_it_acknowledges_and_a_patch_acknowledges_for_another() {
    let f = fixture().await;
    let store = RecipientStore::new("features");
    let gate = Recipient { blocking: true, ..recipient(Target::Queue { queue: "mirror".into() }, true) };
    store.put(&f.backend, "gate", &gate, "admin").await.unwrap();
    store.put(&f.backend, "tally", &recipient(Target::Queue { queue: "second".into() }, true), "admin").await.unwrap();
    let d = Dissemination::with_settings(f.backend.clone(), f.config.clone(), Duration::ZERO, 6, Duration::ZERO).unwrap();
    let acks = acknowledgement::Acknowledgement::new(f.backend.clone(), f.config.clone());
    let run_acks = || async {
        let got = f.take("feature-ack").await;
        let r = acks.handle(LambdaEvent::new(sqs_event("feature-ack", &got).unwrap(), Context::default())).await.unwrap();
        assert!(r.batch_item_failures.is_empty());
        got.len()
    };

    // The creation is done with its feature but held: GRANTED, no SUCCESS yet.
    f.create("c1", "p1").await;
    let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("p1"));
    assert_eq!(request_state(&f, "c1").await, ("GRANTED".into(), "WAITING_BLOCKING_DISSEMINATION".into()));
    f.disseminate(&d).await;
    assert!(successes(&f).await.is_empty(), "no SUCCESS before the blocking recipient acknowledges");
    assert_eq!((counter(&f, "gate.pending").await, counter(&f, "tally.pending").await), (1, 1));

    // A patch naming tally acknowledges for tally; it is itself held by gate.
    let patch = json!({"metadata": {"acknowledgedRecipient": "tally"},
        "feature": {"type": "Feature", "urn": urn, "id": "p1", "entityType": "DATA", "model": "M", "geometry": null, "properties": {}}});
    f.ingest("u1", "PATCH", patch).await;
    f.disseminate(&d).await;
    assert_eq!(f.take("mirror").await.len(), 2, "gate got the creation and the patch");
    assert_eq!(run_acks().await, 1, "the patch sent one acknowledgement");
    assert_eq!((counter(&f, "tally.pending").await, counter(&f, "tally.done").await), (0, 1));
    assert_eq!(
        (counter(&f, "gate.pending").await, counter(&f, "gate.done").await),
        (1, 0),
        "one acknowledgement outstanding for gate, the patch's notification counted with the creation's"
    );
    assert_eq!(request_state(&f, "c1").await.1, "WAITING_BLOCKING_DISSEMINATION");
    assert_eq!(request_state(&f, "u1").await.1, "WAITING_BLOCKING_DISSEMINATION");
    assert!(successes(&f).await.is_empty());

    // Gate acknowledges, twice: both requests are done, each with one SUCCESS.
    let ack = OutgoingMessage::new(json!({"urn": urn, "recipientLabel": "gate"}).to_string());
    f.backend.queue.send_batch("feature-ack", vec![ack.clone()]).await.unwrap();
    run_acks().await;
    f.backend.queue.send_batch("feature-ack", vec![ack]).await.unwrap();
    run_acks().await;
    assert_eq!(request_state(&f, "c1").await, ("SUCCESS".into(), "DONE".into()));
    assert_eq!(request_state(&f, "u1").await, ("SUCCESS".into(), "DONE".into()));
    assert_eq!(successes(&f).await, vec!["c1".to_owned(), "u1".to_owned()]);
    assert_eq!((counter(&f, "gate.pending").await, counter(&f, "gate.done").await), (0, 1));
    let info = DisseminationLog::new("features", "requests", "feature-response").of(&f.backend, &urn).await.unwrap();
    assert!(info.iter().all(|i| i.ack_date.is_some()), "{info:?}");
    assert!(info.iter().find(|i| i.label == "gate").unwrap().blocking);

    // A recipient needing no acknowledgement counts done at once and holds nothing.
    store.delete(&f.backend, "gate").await.unwrap();
    store.put(&f.backend, "open", &recipient(Target::Queue { queue: "mirror".into() }, false), "admin").await.unwrap();
    f.create("c2", "p2").await;
    assert_eq!(request_state(&f, "c2").await, ("SUCCESS".into(), "DONE".into()));
    f.disseminate(&d).await;
    assert_eq!((counter(&f, "open.pending").await, counter(&f, "open.done").await), (0, 1));
}

/// Topics that record what is published.
#[derive(Debug, Default)]
struct RecordedTopics {
    published: std::sync::Mutex<Vec<(String, String, String)>>,
}

#[async_trait::async_trait]
impl granary_ports::Topics for RecordedTopics {
    async fn publish(&self, topic_arn: &str, message: &str, attributes: &[(&str, &str)]) -> granary_ports::PortResult<()> {
        let id = attributes.iter().find(|(n, _)| *n == "granary.event.id").map(|(_, v)| v.to_string()).unwrap_or_default();
        self.published.lock().unwrap().push((topic_arn.to_owned(), id, message.to_owned()));
        Ok(())
    }
}

#[tokio::test]
async fn an_sns_recipient_is_published_each_notification_and_without_topics_it_fails_with_its_reason() {
    let f = fixture().await;
    let topic = "arn:aws:sns:eu-west-1:123456789012:granary-subscribers";
    let store = RecipientStore::new("features");
    store.put(&f.backend, "topic", &recipient(Target::Sns { topic_arn: topic.into() }, false), "admin").await.unwrap();
    let topics = std::sync::Arc::new(RecordedTopics::default());
    let d = Dissemination::with_settings(f.backend.clone(), f.config.clone(), Duration::ZERO, 2, Duration::ZERO)
        .unwrap()
        .with_topics(topics.clone());
    f.create("c4", "p4").await;
    f.disseminate(&d).await;
    let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("p4"));
    let published = topics.published.lock().unwrap().clone();
    assert_eq!(published.len(), 1);
    assert_eq!((published[0].0.as_str(), published[0].1.clone()), (topic, format!("{urn}:CREATED:c4")));
    let body: Value = serde_json::from_str(&published[0].2).unwrap();
    assert_eq!(body["payload"]["urn"], urn.as_str());
    let info = DisseminationLog::new("features", "requests", "feature-response").of(&f.backend, &urn).await.unwrap();
    assert_eq!(info.len(), 1, "the delivery is recorded");

    // One machine reaches no SNS topic: the notification fails with a reason naming it.
    let local = Dissemination::with_settings(f.backend.clone(), f.config.clone(), Duration::ZERO, 2, Duration::ZERO).unwrap();
    f.create("c5", "p5").await;
    f.disseminate(&local).await;
    let dead = f.take("feature-notification-dead-letter").await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].attributes[dissemination::ATTR_REASON].contains("cannot be reached on this backend"), "{:?}", dead[0].attributes);
}

#[tokio::test]
async fn notifications_of_one_feature_delivered_at_once_all_wait_for_one_acknowledgement_that_releases_them_all() {
    let f = fixture().await;
    let gate = Recipient { blocking: true, ..recipient(Target::Queue { queue: "mirror".into() }, true) };
    RecipientStore::new("features").put(&f.backend, "gate", &gate, "admin").await.unwrap();
    f.create("c1", "p1").await;
    let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid("p1"));
    for (i, id) in ["u1", "u2"].iter().enumerate() {
        let patch = json!({"metadata": {},
            "feature": {"type": "Feature", "urn": urn, "id": "p1", "entityType": "DATA", "model": "M", "geometry": null, "properties": {"n": i}}});
        f.ingest(id, "PATCH", patch).await;
    }
    // The three notifications in one batch, delivered at once, each recorded against the others: the
    // table makes the three first reads of the delivery record meet, so that all three read the same
    // state before any writes.
    let mut met = f.backend.clone();
    met.table = Arc::new(MeetingTable { inner: f.backend.table.clone(), reads: Default::default(), meet: tokio::sync::Barrier::new(3) });
    let d = Dissemination::with_settings(met, f.config.clone(), Duration::ZERO, 6, Duration::ZERO).unwrap();
    let batch = f.take("feature-notification").await;
    assert_eq!(batch.len(), 3);
    let r = d.handle(LambdaEvent::new(sqs_event("feature-notification", &batch).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(f.take("mirror").await.len(), 3);
    assert_eq!((counter(&f, "gate.pending").await, counter(&f, "gate.done").await), (1, 0), "one acknowledgement outstanding");
    for id in ["c1", "u1", "u2"] {
        assert_eq!(request_state(&f, id).await.1, "WAITING_BLOCKING_DISSEMINATION", "{id}");
    }
    let acks = acknowledgement::Acknowledgement::new(f.backend.clone(), f.config.clone());
    let ack = ReceivedMessage {
        message_id: "a1".into(),
        receipt_handle: "a1.1".into(),
        body: json!({"urn": urn, "recipientLabel": "gate"}).to_string(),
        attributes: Default::default(),
        receive_count: 1,
        sent_at_ms: 0,
    };
    let r = acks.handle(LambdaEvent::new(sqs_event("feature-ack", &[ack]).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    for id in ["c1", "u1", "u2"] {
        assert_eq!(request_state(&f, id).await, ("SUCCESS".into(), "DONE".into()), "{id} released by the one acknowledgement");
    }
    assert_eq!((counter(&f, "gate.pending").await, counter(&f, "gate.done").await), (0, 1));
    // Delivered again (an SQS redelivery of the whole batch): nothing counted twice, nothing held again.
    let r = d.handle(LambdaEvent::new(sqs_event("feature-notification", &batch).unwrap(), Context::default())).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    assert_eq!((counter(&f, "gate.pending").await, counter(&f, "gate.done").await), (0, 1));
    let info = DisseminationLog::new("features", "requests", "feature-response").of(&f.backend, &urn).await.unwrap();
    assert!(info.len() == 1 && info[0].ack_date.is_some(), "{info:?}");
}

/// A table whose first three reads of a delivery record (`N#<urn>` / label) wait for one another.
struct MeetingTable {
    inner: Arc<dyn granary_ports::Table>,
    reads: std::sync::atomic::AtomicUsize,
    meet: tokio::sync::Barrier,
}

#[async_trait::async_trait]
impl granary_ports::Table for MeetingTable {
    fn take_sent_with_commit(&self, event_id: &str) -> bool {
        self.inner.take_sent_with_commit(event_id)
    }
    async fn get(&self, table: &str, key: &Key) -> granary_ports::PortResult<Option<granary_ports::Item>> {
        let read = self.inner.get(table, key).await;
        if key.pk.starts_with("N#") && !key.sk.contains('#') && self.reads.fetch_add(1, Ordering::SeqCst) < 3 {
            self.meet.wait().await;
        }
        read
    }
    async fn put(&self, table: &str, item: granary_ports::Item, cond: Option<granary_ports::Cond>) -> granary_ports::PortResult<()> {
        self.inner.put(table, item, cond).await
    }
    async fn update(
        &self,
        table: &str,
        key: &Key,
        updates: Vec<granary_ports::Update>,
        cond: Option<granary_ports::Cond>,
    ) -> granary_ports::PortResult<granary_ports::Item> {
        self.inner.update(table, key, updates, cond).await
    }
    async fn delete(
        &self,
        table: &str,
        key: &Key,
        cond: Option<granary_ports::Cond>,
    ) -> granary_ports::PortResult<Option<granary_ports::Item>> {
        self.inner.delete(table, key, cond).await
    }
    async fn transact(&self, ops: Vec<granary_ports::TxOp>) -> granary_ports::PortResult<()> {
        self.inner.transact(ops).await
    }
    async fn query(&self, query: granary_ports::Query) -> granary_ports::PortResult<granary_ports::Page> {
        self.inner.query(query).await
    }
}
