//! What every Granary function shares at its edge: configuration from the environment, identity read
//! from API Gateway's JWT authorizer claims, problem+json answers, SQS message views and JSON logs.
//!
//! Functions stay thin: parse the event with these helpers, call a service, map the result.

pub mod config;
pub mod http;
pub mod identity;
pub mod sqs;

pub use config::Config;
pub use identity::Identity;

/// Installs JSON logs (as CloudWatch and granary-local both want them), once per process.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRANARY_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(false).without_time().try_init();
}
