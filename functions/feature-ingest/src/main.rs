//! The `feature-ingest` Lambda: SQS batches from the feature queues to
//! [`feature_ingest::FeatureIngest`] on the AWS backend, answering with partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    granary_lambda::init_logging();
    let config = granary_lambda::Config::from_env();
    let resources = granary_resources::deployed()?;
    let aws = granary_aws::Aws::connect(&resources, granary_aws::AwsOptions::default()).await;
    let ingest = Arc::new(feature_ingest::FeatureIngest::new(aws.backend(), config));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let ingest = ingest.clone();
        async move { ingest.handle(event).await }
    }))
    .await
}
