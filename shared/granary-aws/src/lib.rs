//! The AWS implementation of Granary's ports: DynamoDB tables, SQS queues and S3 blobs, configured from
//! the environment the way every AWS SDK client is (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials), with
//! the SDK's standard retry policy (exponential backoff with jitter) on throttling and transient errors.
//!
//! Every guard is a ConditionExpression or part of a TransactWriteItems call, never a read followed by a
//! write. The same contract suite as the embedded backend (`granary-contract`) runs against this one on
//! moto. Where moto is laxer than AWS (batch sizes, signatures), the rules are enforced here before the
//! call, by the same helpers the embedded backend uses.

mod blob;
mod count;
pub mod emulator;
mod error;
mod expr;
mod functions;
pub mod provision;
mod queue;
mod table;

pub use blob::AwsBlobs;
pub use count::{RequestCounter, RequestCounts};
pub use functions::AwsFunctions;
pub use queue::AwsQueue;
pub use table::AwsTable;

use aws_config::{BehaviorVersion, Region};
use granary_ports::{Backend, Clock, IdSource, RandomIds, Resources, SystemClock};
use std::sync::Arc;

/// How to reach AWS (or an emulator).
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// Prepended to every table, queue and bucket name (tests isolate themselves with it).
    pub name_prefix: String,
    /// An endpoint for every service (an emulator); otherwise `AWS_ENDPOINT_URL` or AWS itself.
    pub endpoint_url: Option<String>,
    /// A region; otherwise the environment's.
    pub region: Option<String>,
    /// Static credentials (access key, secret); otherwise the environment's provider chain.
    pub static_credentials: Option<(String, String)>,
    /// Counts every HTTP request sent, by service.
    pub counter: Option<RequestCounter>,
}

/// The AWS backend: clients built once per cold start.
#[derive(Clone)]
pub struct Aws {
    /// DynamoDB tables.
    pub table: Arc<AwsTable>,
    /// SQS queues.
    pub queue: Arc<AwsQueue>,
    /// S3 buckets.
    pub blobs: Arc<AwsBlobs>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    prefix: String,
    clients: (aws_sdk_dynamodb::Client, aws_sdk_sqs::Client, aws_sdk_s3::Client),
}

impl Aws {
    /// Builds the clients for `resources` from the environment and `options`.
    pub async fn connect(resources: &Resources, options: AwsOptions) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((key, secret)) = &options.static_credentials {
            loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(key, secret, None, None, "granary-static"));
        }
        let sdk = loader.load().await;
        let counter = options.counter.clone().unwrap_or_default();

        let ddb = aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(counter.interceptor(count::Service::DynamoDb));
        let sqs = aws_sdk_sqs::config::Builder::from(&sdk).interceptor(counter.interceptor(count::Service::Sqs));
        // An emulator serves buckets by path, not by virtual host.
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .interceptor(counter.interceptor(count::Service::S3));

        let prefix = options.name_prefix.clone();
        let clients = (
            aws_sdk_dynamodb::Client::from_conf(ddb.build()),
            aws_sdk_sqs::Client::from_conf(sqs.build()),
            aws_sdk_s3::Client::from_conf(s3.build()),
        );
        Self {
            table: Arc::new(AwsTable::new(clients.0.clone(), &prefix, resources)),
            queue: Arc::new(AwsQueue::new(clients.1.clone(), &prefix, resources)),
            blobs: Arc::new(AwsBlobs::new(clients.2.clone(), &prefix)),
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            prefix,
            clients,
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn table_client(&self) -> aws_sdk_dynamodb::Client {
        self.clients.0.clone()
    }

    pub(crate) fn queue_client(&self) -> aws_sdk_sqs::Client {
        self.clients.1.clone()
    }

    pub(crate) fn blob_client(&self) -> aws_sdk_s3::Client {
        self.clients.2.clone()
    }

    /// The ports as the handlers take them.
    pub fn backend(&self) -> Backend {
        Backend {
            table: self.table.clone(),
            queue: self.queue.clone(),
            blobs: self.blobs.clone(),
            clock: self.clock.clone(),
            ids: self.ids.clone(),
        }
    }
}
