//! The port contract on the AWS adapter, against moto (started by the tests when none is given), and
//! what only the AWS side shows: request counting.

use async_trait::async_trait;
use granary_aws::emulator::{options, shared_moto};
use granary_aws::{Aws, RequestCounter};
use granary_contract::{Harness, TABLE, WORK, contract_tests};
use granary_ports::{Backend, Item, Key, OutgoingMessage, Resources};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const VISIBILITY: Duration = Duration::from_secs(2);

struct MotoHarness {
    endpoint: &'static str,
    prefix: String,
    resources: Resources,
}

/// A fresh set of names for each test, so tests share one moto without seeing each other.
fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t{}x{}-", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

async fn harness() -> MotoHarness {
    let endpoint = shared_moto();
    let prefix = unique_prefix();
    let resources = granary_contract::resources(VISIBILITY);
    let aws = Aws::connect(&resources, options(endpoint, &prefix)).await;
    granary_aws::provision::provision(&aws, &resources).await.expect("provision on moto");
    MotoHarness { endpoint, prefix, resources }
}

#[async_trait]
impl Harness for MotoHarness {
    async fn connect(&self) -> Backend {
        // New clients, with their own connection pools: what another Lambda instance would have.
        Aws::connect(&self.resources, options(self.endpoint, &self.prefix)).await.backend()
    }
    async fn advance(&self, by: Duration) {
        // Time on an emulator is real time.
        tokio::time::sleep(by).await;
    }
    fn restore_delay(&self) -> Duration {
        // moto completes a Glacier restore at once; real restore waits are shown on the embedded backend.
        Duration::ZERO
    }
    fn visibility(&self) -> Duration {
        VISIBILITY
    }
    fn delay(&self) -> Duration {
        Duration::from_secs(4)
    }
    fn atomic_under_concurrency(&self) -> bool {
        // moto checks a condition and writes apart: racing guarded increments both passed (1 run in 4).
        false
    }
}

contract_tests!(harness());

#[tokio::test]
async fn requests_are_counted_by_service() {
    let h = harness().await;
    let counter = RequestCounter::default();
    let mut opts = options(h.endpoint, &h.prefix);
    opts.counter = Some(counter.clone());
    let b = Aws::connect(&h.resources, opts).await.backend();
    for i in 0..3 {
        b.table.put(TABLE, Item::new(Key::new(format!("k{i}"), "s")), None).await.unwrap();
    }
    let msgs = (0..10).map(|i| OutgoingMessage::new(i.to_string())).collect();
    b.queue.send_batch(WORK, msgs).await.unwrap();
    b.queue.send_batch(WORK, vec![OutgoingMessage::new("x")]).await.unwrap();
    let c = counter.get();
    assert_eq!(c.dynamodb, 3, "one PutItem each");
    assert_eq!(c.sqs, 3, "one GetQueueUrl (then cached) and one SendMessageBatch per batch");
    assert_eq!(c.s3, 0);
    assert_eq!(c.total(), 6);
}

/// The SDK's configuration for moto, for clients of services Granary's ports do not wrap.
async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await
}

/// A notification published to a recipient's SNS topic reaches the queue subscribed to it, with its
/// id as a message attribute.
#[tokio::test]
async fn a_publication_reaches_the_queue_subscribed_to_the_topic() {
    use granary_ports::Topics;
    let endpoint = shared_moto();
    let sdk = sdk_config(endpoint).await;
    let (sns, sqs) = (aws_sdk_sns::Client::new(&sdk), aws_sdk_sqs::Client::new(&sdk));
    let name = format!("{}subscriber", unique_prefix());
    let topic = sns.create_topic().name(&name).send().await.unwrap().topic_arn.unwrap();
    let queue_url = sqs.create_queue().queue_name(&name).send().await.unwrap().queue_url.unwrap();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(&queue_arn).send().await.unwrap();

    let topics = granary_aws::AwsTopics::from_sdk(&sdk);
    topics.publish(&topic, r#"{"metadata":{"action":"CREATED"}}"#, &[("granary.event.id", "urn:CREATED:r1")]).await.unwrap();
    let got = sqs.receive_message().queue_url(&queue_url).wait_time_seconds(5).send().await.unwrap().messages.unwrap_or_default();
    assert_eq!(got.len(), 1);
    // SNS wraps the notification in its envelope, attributes beside it.
    let envelope: serde_json::Value = serde_json::from_str(got[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(envelope["Message"], r#"{"metadata":{"action":"CREATED"}}"#);
    assert_eq!(envelope["MessageAttributes"]["granary.event.id"]["Value"], "urn:CREATED:r1");

    let unknown = topic.replace(&name, "nobody-listens");
    let err = topics.publish(&unknown, "{}", &[]).await.unwrap_err();
    assert!(err.to_string().contains("publishing to"), "{err}");
}

/// A table declared with a TTL attribute gets DynamoDB's TTL on it, as the template gives it in AWS.
#[tokio::test]
async fn provisioning_enables_the_declared_ttl() {
    let endpoint = shared_moto();
    let prefix = unique_prefix();
    let mut resources = granary_contract::resources(VISIBILITY);
    resources.tables[0].ttl_attr = Some("purgeAt".into());
    let aws = Aws::connect(&resources, options(endpoint, &prefix)).await;
    granary_aws::provision::provision(&aws, &resources).await.expect("provision on moto");
    let sdk = sdk_config(endpoint).await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let name = format!("{prefix}{}", resources.tables[0].name);
    let with = ddb.describe_time_to_live().table_name(name).send().await.unwrap().time_to_live_description.unwrap();
    assert_eq!(with.time_to_live_status, Some(aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled));
    assert_eq!(with.attribute_name.as_deref(), Some("purgeAt"));
    // Provisioning again (the tables exist) is not an error.
    granary_aws::provision::provision(&aws, &resources).await.expect("provision twice");
}
