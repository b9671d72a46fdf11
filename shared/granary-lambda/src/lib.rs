//! What every Granary function shares at its edge: configuration from the environment, identity read
//! from API Gateway's JWT authorizer claims, problem+json answers, SQS message views and JSON logs.
//!
//! Functions stay thin: parse the event with these helpers, call a service, map the result.

pub mod config;
pub mod http;
pub mod identity;
pub mod openapi;
#[cfg(feature = "outbound")]
pub mod outbound;
pub mod sqs;

pub use config::Config;
pub use identity::Identity;

/// What every Lambda builds once per cold start, outside its handler: JSON logs, the configuration,
/// and the ports on AWS (clients from the environment; tables and queues from the template this build
/// was made from, named by the environment the template sets).
pub async fn cold_start() -> Result<(Config, granary_ports::Backend), Box<dyn std::error::Error + Send + Sync>> {
    init_logging();
    let config = Config::from_env();
    config.check()?;
    let resources = granary_resources::deployed()?;
    let aws = granary_aws::Aws::connect(&resources, granary_aws::AwsOptions::default()).await;
    Ok((config, aws.backend()))
}

/// The Lambda functions a handler may call (a configured processing's), with clients from the
/// environment.
#[cfg(feature = "lambda")]
pub async fn functions() -> std::sync::Arc<dyn granary_ports::Functions> {
    std::sync::Arc::new(granary_aws::AwsFunctions::from_env().await)
}

/// Installs JSON logs (as CloudWatch and granary-local both want them), once per process.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRANARY_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(false).without_time().try_init();
}
