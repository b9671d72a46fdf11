//! The `acknowledgement` Lambda: SQS batches of DisseminationAckEvents to
//! [`acknowledgement::Acknowledgement`] on the AWS backend, answering with partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let acks = Arc::new(acknowledgement::Acknowledgement::new(backend, config));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let acks = acks.clone();
        async move { acks.handle(event).await }
    }))
    .await
}
