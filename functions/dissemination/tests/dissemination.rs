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
        let msg = ReceivedMessage {
            message_id: request_id.into(),
            receipt_handle: format!("{request_id}.1"),
            body: body.to_string(),
            attributes: [("regards.request.id".to_owned(), request_id.to_owned())].into(),
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

    /// Runs dissemination on the notification queue until it is empty (retries are not delayed here).
    async fn disseminate(&self, d: &Dissemination) {
        for _ in 0..20 {
            let got = self.take("feature-notification").await;
            if got.is_empty() {
                return;
            }
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

    let log = DisseminationLog::new("features");
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
    let d = Dissemination::with_settings(f.backend.clone(), f.config.clone(), Duration::ZERO, 2, Duration::ZERO).unwrap();
    f.disseminate(&d).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no connection reached the webhook");
    assert!(accepted.lock().unwrap().is_empty());
    let dead = f.take("feature-notification-dead-letter").await;
    assert_eq!(dead.len(), 1);
    let reason = &dead[0].attributes[dissemination::ATTR_REASON];
    assert!(reason.contains("loopback address Granary may not connect to"), "{reason}");
}
