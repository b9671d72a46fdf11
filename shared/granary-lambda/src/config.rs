//! Configuration read from environment variables. Each variable has one meaning across every function
//! (granary-local runs them all in one process), a default for one machine, and a row in the README.

use granary_domain::Priority;
use granary_domain::dispatch::DispatchLimits;
use granary_domain::order::{OrderSettings, Quota};
use granary_domain::outbound::OutboundPolicy;
use granary_domain::processing::{Processes, parse_processes};
use granary_domain::storage::{LocationClass, Locations, StorageLocation, parse_locations};
use granary_ports::access::{Access, Grants, Kind};

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
    /// The storage worker's queue of storage jobs (`GRANARY_STORAGE_JOBS_QUEUE`).
    pub storage_jobs_queue: String,
    /// The queue of storage events that storage-ready consumes (`GRANARY_STORAGE_READY_QUEUE`).
    pub storage_ready_queue: String,
    /// Where storage events that cannot be applied go, with their reason
    /// (`GRANARY_STORAGE_READY_DEAD_LETTER_QUEUE`).
    pub storage_ready_dead_letter_queue: String,
    /// Storage locations by name (`GRANARY_STORAGE_LOCATIONS`, a JSON object
    /// `{"<name>": {"bucket", "prefix", "class": "ONLINE"|"NEARLINE"}}`; by default `online` and
    /// `nearline` in the storage bucket `GRANARY_STORAGE_BUCKET`). A wrong value fails the cold start.
    pub storage_locations: Result<Locations, String>,
    /// How long a request may wait for its files to be stored before it times out
    /// (`GRANARY_STORAGE_TIMEOUT_SECS`, default 4 hours).
    pub storage_timeout_secs: u64,
    /// The orders table: baskets, orders, suborders, order files (`GRANARY_ORDERS_TABLE`).
    pub orders_table: String,
    /// The product property (a dotted path under `properties`) that time-range searches read
    /// (`GRANARY_SEARCH_DATE_PROPERTY`, default `acquisitionDate`).
    pub search_date_property: String,
    /// Most lines of a basket upload (`GRANARY_BASKET_UPLOAD_MAX_LINES`, default 1000).
    pub basket_upload_max_lines: usize,
    /// Recipients' acknowledgements (`GRANARY_ACK_QUEUE`).
    pub ack_queue: String,
    /// The queue of orders to expand (`GRANARY_ORDER_CREATE_QUEUE`).
    pub order_create_queue: String,
    /// Suborder size and order durations (`GRANARY_ORDER_SUBORDER_MAX_MIB`, default 100;
    /// `GRANARY_ORDER_SUBORDER_HOURS`, default 240; `GRANARY_ORDER_MAX_HOURS`, default 168).
    pub order_settings: OrderSettings,
    /// The quota of users an admin set none for (`GRANARY_QUOTA_MAX_FILES`, `GRANARY_QUOTA_MAX_BYTES`,
    /// -1 for no limit, the default; `GRANARY_QUOTA_PERIOD_HOURS`, default 24).
    pub default_quota: Quota,
    /// Dispatch nudges and suborders' storage jobs (`GRANARY_SUBORDER_DISPATCH_QUEUE`).
    pub suborder_dispatch_queue: String,
    /// Where order events go: REGARDS's OrderResponseDtoEvent SUBORDER_DONE, DONE, FAILED, and reminders
    /// (`GRANARY_ORDER_EVENTS_QUEUE`).
    pub order_events_queue: String,
    /// Where FilesRestorationRequestEvents for an external storage service go
    /// (`GRANARY_FILES_RESTORATION_QUEUE`).
    pub files_restoration_queue: String,
    /// The dispatch pool and per-user limit (`GRANARY_ORDER_POOL_MAX`, default 20;
    /// `GRANARY_ORDER_USER_MAX`, default 2).
    pub dispatch_limits: DispatchLimits,
    /// How long a storage suborder may wait on its restores or storage service before its pending files
    /// fail (`GRANARY_SUBORDER_TIMEOUT_HOURS`, default 48: a Glacier bulk restore takes up to 12 hours).
    pub suborder_timeout_hours: i64,
    /// The key signing order tokens, which open an order's metalink and files without the user's token
    /// (`GRANARY_ORDER_TOKEN_SECRET`, at least 32 bytes; order links are off without it). In the cloud a
    /// generated Secrets Manager secret; granary-local generates one in its data directory.
    pub order_token_secret: Secret,
    /// Where zips of orders are built in the cloud (`GRANARY_STAGING_BUCKET`; its objects expire).
    pub staging_bucket: String,
    /// How long a signed download URL lives, in seconds (`GRANARY_DOWNLOAD_URL_SECS`, default 300).
    pub download_url_secs: u64,
    /// The configured processings a dataset selection may name besides the built-in `granary-pack`
    /// (`GRANARY_PROCESSES`, JSON: see `granary_domain::processing`). A wrong value fails the cold start.
    pub processes: Result<Processes, String>,
    /// The buckets an `s3://` file source may name (`GRANARY_STORAGE_SOURCE_BUCKETS`, comma-separated;
    /// unset or `*`: any bucket the backend reaches, as on one machine; empty: none). The template sets
    /// it from the `SourceBuckets` parameter, which also grants the storage worker their reading.
    pub storage_source_buckets: Option<std::collections::BTreeSet<String>>,
    /// The buckets storage locations an admin defines may use besides the configured locations'
    /// (`GRANARY_LOCATION_BUCKETS`, comma-separated; unset or `*`: any, as on one machine; empty: none).
    /// The template sets it from the `LocationBuckets` parameter, which also grants their use.
    pub location_buckets: Option<std::collections::BTreeSet<String>>,
    /// Where URLs users and admins give (`http(s)` file sources, webhooks) may lead
    /// (`GRANARY_OUTBOUND_SCHEMES`, default `http,https`; `GRANARY_OUTBOUND_HOSTS`, unset or `*` for any
    /// host; `GRANARY_OUTBOUND_INTERNAL`, the internal networks reachable anyway, unset or `*` for all
    /// as on one machine, empty for none as the template sets it). A wrong value fails the cold start.
    pub outbound: Result<OutboundPolicy, String>,
    /// The directories `file://` sources may be read from (`GRANARY_STORAGE_FILE_ROOTS`,
    /// comma-separated; none by default, as in the cloud).
    pub storage_file_roots: Vec<std::path::PathBuf>,
}

/// A list of buckets from the environment: unset or `*` for any, otherwise the names given (none when
/// empty).
fn bucket_list(value: Option<String>) -> Option<std::collections::BTreeSet<String>> {
    let list = value?;
    if list.trim() == "*" {
        return None;
    }
    Some(list.split(',').map(str::trim).filter(|b| !b.is_empty()).map(str::to_owned).collect())
}

/// A secret value: its `Debug` never shows it, so a logged configuration does not leak it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    /// The value.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(unset)" } else { "Secret(..)" })
    }
}

/// The locations used when `GRANARY_STORAGE_LOCATIONS` is unset: `online` and `nearline`, two prefixes
/// of the deployment's storage bucket.
pub fn default_locations(bucket: &str) -> Locations {
    let location = |prefix: &str, class| StorageLocation { bucket: bucket.to_owned(), prefix: prefix.to_owned(), class };
    Locations::from([
        ("online".to_owned(), location("online", LocationClass::Online)),
        ("nearline".to_owned(), location("nearline", LocationClass::Nearline)),
    ])
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The configuration with every variable unset: the names one machine and the tests use.
    pub fn defaults() -> Self {
        Self::from_lookup(|_| None)
    }

    /// The configuration from `lookup`, which gives a variable's value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let env_or = |name: &str, default: &str| lookup(name).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned());
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
            storage_jobs_queue: env_or("GRANARY_STORAGE_JOBS_QUEUE", "storage-jobs"),
            storage_ready_queue: env_or("GRANARY_STORAGE_READY_QUEUE", "storage-ready"),
            storage_ready_dead_letter_queue: env_or("GRANARY_STORAGE_READY_DEAD_LETTER_QUEUE", "storage-ready-dead-letter"),
            storage_locations: match lookup("GRANARY_STORAGE_LOCATIONS") {
                Some(text) if !text.trim().is_empty() => {
                    parse_locations(&text).map_err(|e| format!("environment variable GRANARY_STORAGE_LOCATIONS: {e}"))
                }
                _ => Ok(default_locations(&env_or("GRANARY_STORAGE_BUCKET", "storage"))),
            },
            storage_timeout_secs: lookup("GRANARY_STORAGE_TIMEOUT_SECS").and_then(|v| v.parse().ok()).unwrap_or(4 * 3600),
            orders_table: env_or("GRANARY_ORDERS_TABLE", "orders"),
            search_date_property: env_or("GRANARY_SEARCH_DATE_PROPERTY", "acquisitionDate"),
            basket_upload_max_lines: lookup("GRANARY_BASKET_UPLOAD_MAX_LINES").and_then(|v| v.parse().ok()).unwrap_or(1000),
            order_create_queue: env_or("GRANARY_ORDER_CREATE_QUEUE", "order-create"),
            ack_queue: env_or("GRANARY_ACK_QUEUE", "feature-ack"),
            default_quota: {
                let number = |name: &str, default: i64| lookup(name).and_then(|v| v.parse::<i64>().ok()).unwrap_or(default);
                Quota {
                    max_files: number("GRANARY_QUOTA_MAX_FILES", -1),
                    max_bytes: number("GRANARY_QUOTA_MAX_BYTES", -1),
                    period_hours: number("GRANARY_QUOTA_PERIOD_HOURS", 24),
                }
            },
            suborder_dispatch_queue: env_or("GRANARY_SUBORDER_DISPATCH_QUEUE", "suborder-dispatch"),
            order_events_queue: env_or("GRANARY_ORDER_EVENTS_QUEUE", "order-events"),
            files_restoration_queue: env_or("GRANARY_FILES_RESTORATION_QUEUE", "files-restoration"),
            dispatch_limits: {
                let number =
                    |name: &str, default: i64| lookup(name).and_then(|v| v.parse::<i64>().ok()).filter(|n| *n > 0).unwrap_or(default);
                DispatchLimits { pool: number("GRANARY_ORDER_POOL_MAX", 20), per_user: number("GRANARY_ORDER_USER_MAX", 2) }
            },
            suborder_timeout_hours: lookup("GRANARY_SUBORDER_TIMEOUT_HOURS").and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(48),
            order_token_secret: Secret(lookup("GRANARY_ORDER_TOKEN_SECRET").unwrap_or_default()),
            staging_bucket: env_or("GRANARY_STAGING_BUCKET", "order-staging"),
            download_url_secs: lookup("GRANARY_DOWNLOAD_URL_SECS").and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(300),
            storage_source_buckets: bucket_list(lookup("GRANARY_STORAGE_SOURCE_BUCKETS")),
            location_buckets: bucket_list(lookup("GRANARY_LOCATION_BUCKETS")),
            storage_file_roots: lookup("GRANARY_STORAGE_FILE_ROOTS")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(std::path::PathBuf::from)
                .collect(),
            outbound: OutboundPolicy::parse(
                lookup("GRANARY_OUTBOUND_SCHEMES").as_deref(),
                lookup("GRANARY_OUTBOUND_HOSTS").as_deref(),
                lookup("GRANARY_OUTBOUND_INTERNAL").as_deref(),
            ),
            processes: parse_processes(&lookup("GRANARY_PROCESSES").unwrap_or_default())
                .map_err(|e| format!("environment variable GRANARY_PROCESSES: {e}")),
            order_settings: {
                let number =
                    |name: &str, default: i64| lookup(name).and_then(|v| v.parse::<i64>().ok()).filter(|n| *n > 0).unwrap_or(default);
                OrderSettings {
                    suborder_max_bytes: number("GRANARY_ORDER_SUBORDER_MAX_MIB", 100) as u64 * 1024 * 1024,
                    suborder_duration_hours: number("GRANARY_ORDER_SUBORDER_HOURS", 240),
                    expiration_max_hours: number("GRANARY_ORDER_MAX_HOURS", 168),
                }
            },
        }
    }

    /// Fails when a setting is wrong, naming it: a function refuses to start rather than run half-configured.
    pub fn check(&self) -> Result<(), String> {
        self.storage_locations.as_ref().map(drop).map_err(Clone::clone)?;
        self.processes.as_ref().map(drop).map_err(Clone::clone)?;
        self.outbound.as_ref().map(drop).map_err(Clone::clone)?;
        env_number::<u64>("GRANARY_STORAGE_TIMEOUT_SECS", 0).map(drop)?;
        for name in [
            "GRANARY_BASKET_UPLOAD_MAX_LINES",
            "GRANARY_ORDER_SUBORDER_MAX_MIB",
            "GRANARY_ORDER_SUBORDER_HOURS",
            "GRANARY_ORDER_MAX_HOURS",
            "GRANARY_ORDER_POOL_MAX",
            "GRANARY_ORDER_USER_MAX",
            "GRANARY_SUBORDER_TIMEOUT_HOURS",
            "GRANARY_DOWNLOAD_URL_SECS",
        ] {
            if env_number::<i64>(name, 1)? < 1 {
                return Err(format!("environment variable {name}: must be at least 1"));
            }
        }
        Ok(())
    }

    /// The storage locations (none when misconfigured: [`Config::check`] refuses to start then).
    pub fn locations(&self) -> Locations {
        self.storage_locations.clone().unwrap_or_default()
    }

    /// Whether a storage location may be in `bucket`.
    pub fn location_bucket_allowed(&self, bucket: &str) -> bool {
        self.location_buckets.as_ref().is_none_or(|listed| listed.contains(bucket)) || self.configured_buckets().any(|b| b == bucket)
    }

    /// `accesses` to every bucket a storage location may be in (every bucket where no list narrows it).
    pub fn location_grants(&self, accesses: &[Access]) -> Grants {
        let mut grants = Grants::new();
        for &access in accesses {
            match &self.location_buckets {
                None => grants = grants.any(Kind::Bucket, access),
                Some(listed) => {
                    for bucket in listed.iter().map(String::as_str).chain(self.configured_buckets()) {
                        grants = grants.bucket(bucket, access);
                    }
                }
            }
        }
        grants
    }

    /// Whether an `s3://` file source may name `bucket`.
    pub fn source_bucket_allowed(&self, bucket: &str) -> bool {
        self.storage_source_buckets.as_ref().is_none_or(|allowed| allowed.contains(bucket))
            || self.configured_buckets().any(|b| b == bucket)
    }

    /// The buckets of the configured storage locations (read in place: these checks run per file).
    fn configured_buckets(&self) -> impl Iterator<Item = &str> {
        self.storage_locations.as_ref().into_iter().flat_map(|l| l.values()).map(|l| l.bucket.as_str())
    }

    /// The names of Granary's own queues, which no recipient may be.
    pub fn internal_queues(&self) -> Vec<&str> {
        let mut queues: Vec<&str> = self.feature_queues.iter().map(String::as_str).collect();
        queues.extend([
            self.response_queue.as_str(),
            self.feature_dead_letter_queue.as_str(),
            self.notification_queue.as_str(),
            self.storage_jobs_queue.as_str(),
            self.storage_ready_queue.as_str(),
            self.storage_ready_dead_letter_queue.as_str(),
            self.ack_queue.as_str(),
            self.order_create_queue.as_str(),
            self.suborder_dispatch_queue.as_str(),
            self.order_events_queue.as_str(),
            self.files_restoration_queue.as_str(),
        ]);
        queues
    }

    /// The configured processings (none when misconfigured: [`Config::check`] refuses to start then).
    pub fn processes(&self) -> Processes {
        self.processes.clone().unwrap_or_default()
    }

    /// The outbound policy (when misconfigured, the strictest: no internal address at all;
    /// [`Config::check`] refuses to start then).
    pub fn outbound(&self) -> OutboundPolicy {
        self.outbound.clone().unwrap_or_else(|_| OutboundPolicy { internal: Some(vec![]), ..OutboundPolicy::default() })
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
