//! The `order-create` Lambda: SQS batches of orders to expand, to [`order_create::OrderCreate`] on the
//! AWS backend, answering with partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let create = Arc::new(order_create::OrderCreate::new(backend, config));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let create = create.clone();
        async move { create.handle(event).await }
    }))
    .await
}
