//! The `storage-worker` Lambda: SQS batches of storage jobs to [`storage_worker::StorageWorker`] on the
//! AWS backend, answering with partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let worker = Arc::new(storage_worker::StorageWorker::new(backend, config)?);
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = worker.clone();
        async move { worker.handle(event).await }
    }))
    .await
}
