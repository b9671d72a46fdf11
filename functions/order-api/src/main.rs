//! The `order-api` Lambda: API Gateway HTTP API requests to [`order_api::OrderApi`] on the AWS
//! backend. Clients and configuration are built once per cold start, outside the handler.

use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let api = Arc::new(order_api::OrderApi::new(backend, config));
    lambda_http::run(lambda_http::service_fn(move |request| {
        let api = api.clone();
        async move { api.handle(request).await }
    }))
    .await
}
