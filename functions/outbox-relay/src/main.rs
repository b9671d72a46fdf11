//! The `outbox-relay` Lambda: EventBridge scheduled events to [`outbox_relay::OutboxRelay`] on the AWS
//! backend.

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let relay = Arc::new(outbox_relay::OutboxRelay::new(backend, &config)?);
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<CloudWatchEvent>| {
        let relay = relay.clone();
        async move { relay.handle(event).await }
    }))
    .await
}
