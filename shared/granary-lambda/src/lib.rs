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
    let config = in_the_cloud(Config::from_env(), std::env::var_os("GRANARY_OUTBOUND_INTERNAL").is_some());
    config.check()?;
    let resources = granary_resources::deployed()?;
    let aws = granary_aws::Aws::connect(&resources, granary_aws::AwsOptions::default()).await;
    Ok((config, aws.backend()))
}

/// The configuration as a Lambda uses it: with `GRANARY_OUTBOUND_INTERNAL` unset (`internal_set`
/// false), no internal address is reachable. One machine's default (all of them) would otherwise give
/// a function deployed without the template's setting (another tool, a hand-made function) the
/// instance metadata service.
pub fn in_the_cloud(mut config: Config, internal_set: bool) -> Config {
    if !internal_set && let Ok(policy) = &mut config.outbound {
        policy.internal = Some(Vec::new());
    }
    config
}

/// The Lambda functions a handler may call (a configured processing's), with clients from the
/// environment.
#[cfg(feature = "lambda")]
pub async fn functions() -> std::sync::Arc<dyn granary_ports::Functions> {
    std::sync::Arc::new(granary_aws::AwsFunctions::from_env().await)
}

/// Recipients' SNS topics, with a client from the environment.
#[cfg(feature = "sns")]
pub async fn topics() -> std::sync::Arc<dyn granary_ports::Topics> {
    std::sync::Arc::new(granary_aws::AwsTopics::from_env().await)
}

/// Installs JSON logs (as CloudWatch and granary-local both want them), once per process.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRANARY_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(false).without_time().try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_the_cloud_internal_addresses_are_refused_unless_listed() {
        let metadata: std::net::IpAddr = "169.254.169.254".parse().unwrap();
        let unset = in_the_cloud(Config::defaults(), false);
        assert!(unset.outbound().check_addr("h", metadata).is_err(), "unset: none reachable in the cloud");
        assert!(Config::defaults().outbound().check_addr("h", metadata).is_ok(), "unset: all reachable on one machine");
        let listed = Config::from_lookup(|n| (n == "GRANARY_OUTBOUND_INTERNAL").then(|| "10.0.0.0/8".to_owned()));
        let listed = in_the_cloud(listed, true);
        assert!(listed.outbound().check_addr("h", "10.1.2.3".parse().unwrap()).is_ok(), "a listed network stays reachable");
        assert!(listed.outbound().check_addr("h", metadata).is_err());
    }
}
