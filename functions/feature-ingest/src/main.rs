//! The `feature-ingest` Lambda: SQS batches from the feature queues to
//! [`feature_ingest::FeatureIngest`] on the AWS backend, answering with partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let ingest = Arc::new(feature_ingest::FeatureIngest::new(backend, config));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let ingest = ingest.clone();
        async move { ingest.handle(event).await }
    }))
    .await
}
