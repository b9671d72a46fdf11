//! The `order-maintenance` Lambda: EventBridge scheduled events to
//! [`order_maintenance::OrderMaintenance`] on the AWS backend.

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let maintenance = Arc::new(order_maintenance::OrderMaintenance::new(backend, config));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<CloudWatchEvent>| {
        let maintenance = maintenance.clone();
        async move { maintenance.handle(event).await }
    }))
    .await
}
