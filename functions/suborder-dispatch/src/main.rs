//! The `suborder-dispatch` Lambda: SQS batches of dispatch nudges and storage jobs, to
//! [`suborder_dispatch::SuborderDispatch`] on the AWS backend, answering with partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let functions = granary_lambda::functions().await;
    let dispatch = Arc::new(suborder_dispatch::SuborderDispatch::new(backend, config).with_functions(functions));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let dispatch = dispatch.clone();
        async move { dispatch.handle(event).await }
    }))
    .await
}
