//! The `basket-api` Lambda: API Gateway HTTP API requests to [`basket_api::BasketApi`] on the AWS
//! backend. Clients and configuration are built once per cold start, outside the handler.

use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let (config, backend) = granary_lambda::cold_start().await?;
    let api = Arc::new(basket_api::BasketApi::new(backend, config));
    lambda_http::run(lambda_http::service_fn(move |request| {
        let api = api.clone();
        async move { api.handle(request).await }
    }))
    .await
}
