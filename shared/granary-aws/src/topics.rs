//! SNS topics Granary publishes to (a recipient's), with the message attributes a subscriber filters on.

use crate::error::port_error;
use async_trait::async_trait;
use granary_ports::{PortResult, Topics};

/// SNS publications.
#[derive(Debug, Clone)]
pub struct AwsTopics {
    client: aws_sdk_sns::Client,
}

impl AwsTopics {
    /// A client from the environment, the way every SDK client is configured (`AWS_ENDPOINT_URL`,
    /// region, credentials).
    pub async fn from_env() -> Self {
        Self::from_sdk(&crate::environment_config().await)
    }

    /// A client from an SDK configuration (an emulator's, in tests).
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Self {
        Self { client: aws_sdk_sns::Client::new(sdk) }
    }
}

#[async_trait]
impl Topics for AwsTopics {
    async fn publish(&self, topic_arn: &str, message: &str, attributes: &[(&str, &str)]) -> PortResult<()> {
        let mut call = self.client.publish().topic_arn(topic_arn).message(message);
        for (name, value) in attributes {
            let value = aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*value)
                .build()
                .map_err(|e| granary_ports::PortError::Invalid(format!("message attribute {name}: {e}")))?;
            call = call.message_attributes(*name, value);
        }
        call.send().await.map_err(|e| port_error(&format!("publishing to {topic_arn}"), e))?;
        Ok(())
    }
}
