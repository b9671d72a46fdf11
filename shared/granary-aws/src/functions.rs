//! Lambda functions Granary calls (a configured processing), invoked synchronously.

use crate::error::port_error;
use async_trait::async_trait;
use granary_ports::{Functions, PortError, PortResult};

/// Synchronous Lambda invocations.
#[derive(Debug, Clone)]
pub struct AwsFunctions {
    client: aws_sdk_lambda::Client,
}

impl AwsFunctions {
    /// A client from the environment, the way every SDK client is configured (`AWS_ENDPOINT_URL`,
    /// region, credentials). Its read timeout is the SDK's default, none: a processing may take
    /// up to the Lambda maximum of 15 minutes.
    pub async fn from_env() -> Self {
        Self { client: aws_sdk_lambda::Client::new(&crate::environment_config().await) }
    }
}

#[async_trait]
impl Functions for AwsFunctions {
    async fn invoke(&self, function: &str, payload: &[u8]) -> PortResult<Vec<u8>> {
        let out = self
            .client
            .invoke()
            .function_name(function)
            .invocation_type(aws_sdk_lambda::types::InvocationType::RequestResponse)
            .payload(aws_smithy_types::Blob::new(payload))
            .send()
            .await
            .map_err(|e| port_error(&format!("invoking {function}"), e))?;
        let body = out.payload.map(aws_smithy_types::Blob::into_inner).unwrap_or_default();
        // The call worked but the function threw: its error document is the payload.
        if let Some(kind) = out.function_error {
            let detail = String::from_utf8_lossy(&body);
            return Err(PortError::Backend(format!("{function} failed ({kind}): {}", detail.chars().take(500).collect::<String>())));
        }
        Ok(body)
    }
}
