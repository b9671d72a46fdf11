//! Configuration read from environment variables. Each variable has one meaning across every function
//! (granary-local runs them all in one process), a default for one machine, and a row in the README.

use granary_domain::Priority;

/// Reads `name`, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// Reads `name` as a number, or `default` when unset; a value that is not a number is an error naming it.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| format!("environment variable {name}={v:?} is not a number")),
        _ => Ok(default),
    }
}

/// Names of resources and deployment-wide settings, read once per cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The tenant named in every URN (`GRANARY_TENANT`).
    pub tenant: String,
    /// Feature request queues by priority (`GRANARY_FEATURE_HIGH_QUEUE`, `..._NORMAL_QUEUE`, `..._LOW_QUEUE`).
    pub feature_queues: [String; 3],
    /// Where FeatureRequestEvents go (`GRANARY_FEATURE_RESPONSE_QUEUE`).
    pub response_queue: String,
    /// Where feature requests that kept failing go (`GRANARY_FEATURE_DEAD_LETTER_QUEUE`); ingest
    /// records them as requests in error.
    pub feature_dead_letter_queue: String,
    /// Where feature notifications for recipients go (`GRANARY_NOTIFICATION_QUEUE`).
    pub notification_queue: String,
    /// Features table (`GRANARY_FEATURES_TABLE`).
    pub features_table: String,
    /// Requests table (`GRANARY_REQUESTS_TABLE`).
    pub requests_table: String,
    /// The JWT claim holding groups (`GRANARY_GROUPS_CLAIM`).
    pub groups_claim: String,
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Self {
        Self {
            tenant: env_or("GRANARY_TENANT", "granary"),
            feature_queues: [
                env_or("GRANARY_FEATURE_HIGH_QUEUE", "feature-high"),
                env_or("GRANARY_FEATURE_NORMAL_QUEUE", "feature-normal"),
                env_or("GRANARY_FEATURE_LOW_QUEUE", "feature-low"),
            ],
            response_queue: env_or("GRANARY_FEATURE_RESPONSE_QUEUE", "feature-response"),
            feature_dead_letter_queue: env_or("GRANARY_FEATURE_DEAD_LETTER_QUEUE", "feature-dead-letter"),
            notification_queue: env_or("GRANARY_NOTIFICATION_QUEUE", "feature-notification"),
            features_table: env_or("GRANARY_FEATURES_TABLE", "features"),
            requests_table: env_or("GRANARY_REQUESTS_TABLE", "requests"),
            groups_claim: env_or("GRANARY_GROUPS_CLAIM", "cognito:groups"),
        }
    }

    /// The feature queue serving `priority`.
    pub fn feature_queue(&self, priority: Priority) -> &str {
        match priority {
            Priority::High => &self.feature_queues[0],
            Priority::Normal => &self.feature_queues[1],
            Priority::Low => &self.feature_queues[2],
        }
    }
}
