//! The `dissemination` Lambda: SQS batches of notifications to [`dissemination::Dissemination`] on the
//! AWS backend, answering with partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let dissemination = Arc::new(dissemination::Dissemination::new(backend, config)?.with_topics(granary_lambda::topics().await));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let dissemination = dissemination.clone();
        async move { dissemination.handle(event).await }
    }))
    .await
}
