//! The `storage-ready` Lambda: SQS batches of storage events to [`storage_ready::StorageReady`] on the
//! AWS backend, answering with partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let ready = Arc::new(storage_ready::StorageReady::new(backend, config));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let ready = ready.clone();
        async move { ready.handle(event).await }
    }))
    .await
}
