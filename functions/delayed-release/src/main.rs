//! The `delayed-release` Lambda: EventBridge scheduled events to
//! [`delayed_release::DelayedRelease`] on the AWS backend.

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use lambda_runtime::LambdaEvent;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let release = Arc::new(delayed_release::DelayedRelease::new(backend, &config));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<CloudWatchEvent>| {
        let release = release.clone();
        async move { release.handle(event).await }
    }))
    .await
}
