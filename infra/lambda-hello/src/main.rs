//! The smallest `lambda_runtime` function: it answers its event as it came. `granary-bench cold-start`
//! starts it beside every Granary function, built with the same profile, as the baseline.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move { Ok::<_, Error>(event.payload) })).await
}
