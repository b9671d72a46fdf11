//! The AWS implementation of Granary's ports: DynamoDB tables, SQS queues and S3 blobs, configured from
//! the environment the way every AWS SDK client is (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials), with
//! the SDK's standard retry policy (exponential backoff with jitter) on throttling and transient errors.
//!
//! Every guard is a ConditionExpression or part of a TransactWriteItems call, never a read followed by a
//! write. The same contract suite as the embedded backend (`granary-contract`) runs against this one on
//! moto. Where moto is laxer than AWS (batch sizes, signatures), the rules are enforced here before the
//! call, by the same helpers the embedded backend uses.

#[cfg(feature = "s3")]
mod blob;
mod count;
pub mod emulator;
mod error;
mod expr;
#[cfg(feature = "lambda")]
mod functions;
pub mod provision;
mod queue;
mod table;
#[cfg(feature = "sns")]
mod topics;

#[cfg(feature = "s3")]
pub use blob::AwsBlobs;
pub use count::{RequestCounter, RequestCounts};
#[cfg(feature = "lambda")]
pub use functions::AwsFunctions;
pub use queue::AwsQueue;
pub use table::AwsTable;
#[cfg(feature = "sns")]
pub use topics::AwsTopics;

use aws_config::{BehaviorVersion, Region};
use granary_ports::{Backend, BlobStore, Clock, IdSource, RandomIds, Resources, SystemClock};
use std::sync::Arc;

/// How to reach AWS (or an emulator).
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// Prepended to every table, queue and bucket name (tests isolate themselves with it).
    pub name_prefix: String,
    /// An endpoint for every service (an emulator); otherwise `AWS_ENDPOINT_URL` or AWS itself.
    pub endpoint_url: Option<String>,
    /// A region; otherwise the environment's.
    pub region: Option<String>,
    /// Static credentials (access key, secret); otherwise the environment's provider chain.
    pub static_credentials: Option<(String, String)>,
    /// Counts every HTTP request sent, by service.
    pub counter: Option<RequestCounter>,
}

/// The SDK configuration from the environment, loaded once per process. Every client of a function
/// shares it and so its HTTP client: the trusted roots are parsed once at a cold start, not once for
/// the tables and queues and again for a Lambda or SNS client.
pub async fn environment_config() -> aws_config::SdkConfig {
    static CONFIG: tokio::sync::OnceCell<aws_config::SdkConfig> = tokio::sync::OnceCell::const_new();
    CONFIG
        .get_or_init(|| lambda_environment(aws_config::defaults(BehaviorVersion::latest()).http_client(https_client())).load())
        .await
        .clone()
}

/// On Lambda, the region and the function role's credentials are in the environment
/// (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), where the default
/// provider chains find them first anyway. Taking them from there directly spares a cold start the
/// building of the rest of the chains: the web-identity provider alone builds an STS client (its
/// endpoint partitions parsed, their regexes compiled) that a function never calls. Elsewhere (a
/// profile, SSO, an instance role) the default chains stay.
fn lambda_environment(loader: aws_config::ConfigLoader) -> aws_config::ConfigLoader {
    let taken = TakenFromEnvironment::of(|name| std::env::var(name).ok());
    let mut loader = loader;
    if taken.credentials {
        loader = loader.credentials_provider(aws_config::environment::EnvironmentVariableCredentialsProvider::new());
    }
    if let Some(region) = taken.region {
        loader = loader.region(Region::new(region));
    }
    loader
}

/// What [`lambda_environment`] takes from the environment rather than from the default chains.
#[derive(Debug, PartialEq)]
struct TakenFromEnvironment {
    credentials: bool,
    region: Option<String>,
}

impl TakenFromEnvironment {
    fn of(var: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        if set("AWS_LAMBDA_FUNCTION_NAME").is_none() {
            return Self { credentials: false, region: None };
        }
        Self { credentials: set("AWS_ACCESS_KEY_ID").is_some() && set("AWS_SECRET_ACCESS_KEY").is_some(), region: set("AWS_REGION") }
    }
}

/// The root certificates AWS endpoints chain to (Amazon Trust Services: Amazon Root CA 1 to 4, and
/// the Starfield Services G2 root that cross-signs them; <https://www.amazontrust.com/repository/>),
/// valid until 2037–2040. Trusting these five instead of the system's store saves parsing some 140
/// certificates at a cold start, and no other authority's certificate can answer for AWS.
const AMAZON_TRUST_ROOTS: &str = include_str!("amazon-trust-roots.pem");

/// The HTTPS client of every AWS client: the SDK's default (rustls with aws-lc, proxy settings from
/// the environment, the runtime's sleep), trusting the Amazon roots, or the system's store when
/// `GRANARY_AWS_TRUST_ROOTS=system` (an endpoint whose certificate chains elsewhere: a TLS-inspecting
/// proxy, an S3-compatible store).
fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let choice = std::env::var("GRANARY_AWS_TRUST_ROOTS").unwrap_or_default();
    let system = choice.eq_ignore_ascii_case("system");
    if !system && !choice.is_empty() && !choice.eq_ignore_ascii_case("amazon") {
        tracing::warn!(GRANARY_AWS_TRUST_ROOTS = %choice, "neither amazon nor system: the Amazon roots are trusted");
    }
    let trust =
        if system { TrustStore::default() } else { TrustStore::empty().with_native_roots(false).with_pem_certificate(AMAZON_TRUST_ROOTS) };
    // Building a context only moves the trust store in; there is no failure to fall back from.
    let context = TlsContext::builder().with_trust_store(trust).build().expect("a TLS context");
    // What the SDK's own default client does (aws-smithy-runtime's `default_https_client`), with our
    // trust store. `build_with_connector_fn` is hidden from its docs, so Cargo.lock pins the version
    // this was checked against (aws-smithy-http-client 1.1.9).
    aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = aws_smithy_http_client::ConnectorBuilder::default()
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(aws_smithy_http_client::proxy::ProxyConfig::from_env()));
        connector.build()
    })
}

/// The AWS backend: clients built once per cold start.
#[derive(Clone)]
pub struct Aws {
    /// DynamoDB tables.
    pub table: Arc<AwsTable>,
    /// SQS queues.
    pub queue: Arc<AwsQueue>,
    /// S3 buckets (without the `s3` feature, a port that says so: the function links no S3 client).
    pub blobs: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    prefix: String,
    clients: (aws_sdk_dynamodb::Client, aws_sdk_sqs::Client),
    #[cfg(feature = "s3")]
    s3: aws_sdk_s3::Client,
}

impl Aws {
    /// Builds the clients for `resources` from the environment and `options`.
    pub async fn connect(resources: &Resources, options: AwsOptions) -> Self {
        let sdk = if options.endpoint_url.is_none() && options.region.is_none() && options.static_credentials.is_none() {
            environment_config().await
        } else {
            let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
            if let Some(url) = &options.endpoint_url {
                loader = loader.endpoint_url(url);
            }
            if let Some(region) = &options.region {
                loader = loader.region(Region::new(region.clone()));
            }
            if let Some((key, secret)) = &options.static_credentials {
                loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(key, secret, None, None, "granary-static"));
            }
            loader.load().await
        };
        let counter = options.counter.clone().unwrap_or_default();

        let ddb = aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(counter.interceptor(count::Service::DynamoDb));
        let sqs = aws_sdk_sqs::config::Builder::from(&sdk).interceptor(counter.interceptor(count::Service::Sqs));
        // An emulator serves buckets by path, not by virtual host.
        #[cfg(feature = "s3")]
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(sdk.endpoint_url().is_some())
                .interceptor(counter.interceptor(count::Service::S3))
                .build(),
        );

        let prefix = options.name_prefix.clone();
        let clients = (aws_sdk_dynamodb::Client::from_conf(ddb.build()), aws_sdk_sqs::Client::from_conf(sqs.build()));
        #[cfg(feature = "s3")]
        let blobs: Arc<dyn BlobStore> = Arc::new(AwsBlobs::new(s3.clone(), &prefix));
        #[cfg(not(feature = "s3"))]
        let blobs: Arc<dyn BlobStore> = Arc::new(NoBlobs);
        Self {
            table: Arc::new(AwsTable::new(clients.0.clone(), &prefix, resources)),
            queue: Arc::new(AwsQueue::new(clients.1.clone(), &prefix, resources)),
            blobs,
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            prefix,
            clients,
            #[cfg(feature = "s3")]
            s3,
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn table_client(&self) -> aws_sdk_dynamodb::Client {
        self.clients.0.clone()
    }

    pub(crate) fn queue_client(&self) -> aws_sdk_sqs::Client {
        self.clients.1.clone()
    }

    #[cfg(feature = "s3")]
    pub(crate) fn blob_client(&self) -> aws_sdk_s3::Client {
        self.s3.clone()
    }

    /// The ports as the handlers take them.
    pub fn backend(&self) -> Backend {
        Backend {
            table: self.table.clone(),
            queue: self.queue.clone(),
            blobs: self.blobs.clone(),
            clock: self.clock.clone(),
            ids: self.ids.clone(),
        }
    }
}

/// The blob port of a function built without the `s3` feature: it touches no bucket (its grants name
/// none), and links no S3 client.
#[cfg(not(feature = "s3"))]
struct NoBlobs;

#[cfg(not(feature = "s3"))]
impl NoBlobs {
    fn refuse<T>(bucket: &str) -> granary_ports::PortResult<T> {
        Err(granary_ports::PortError::Backend(format!("bucket {bucket}: this function is built without granary-aws's s3 feature")))
    }
}

#[cfg(not(feature = "s3"))]
#[async_trait::async_trait]
impl BlobStore for NoBlobs {
    async fn put(
        &self,
        bucket: &str,
        _: &str,
        _: granary_ports::BlobReader,
        _: granary_ports::StorageClass,
    ) -> granary_ports::PortResult<granary_ports::BlobMeta> {
        Self::refuse(bucket)
    }
    async fn get(&self, bucket: &str, _: &str) -> granary_ports::PortResult<(granary_ports::BlobMeta, granary_ports::BlobReader)> {
        Self::refuse(bucket)
    }
    async fn head(&self, bucket: &str, _: &str) -> granary_ports::PortResult<Option<granary_ports::BlobMeta>> {
        Self::refuse(bucket)
    }
    async fn copy(
        &self,
        bucket: &str,
        _: &str,
        _: &str,
        _: &str,
        _: granary_ports::StorageClass,
    ) -> granary_ports::PortResult<granary_ports::BlobMeta> {
        Self::refuse(bucket)
    }
    async fn delete(&self, bucket: &str, _: &str) -> granary_ports::PortResult<()> {
        Self::refuse(bucket)
    }
    async fn request_restore(&self, bucket: &str, _: &str, _: u32) -> granary_ports::PortResult<granary_ports::RestoreStatus> {
        Self::refuse(bucket)
    }
    async fn signed_get_url(&self, bucket: &str, _: &str, _: std::time::Duration) -> granary_ports::PortResult<String> {
        Self::refuse(bucket)
    }
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn the_amazon_roots_are_five_trust_anchors() {
        let certs = CertificateDer::pem_slice_iter(super::AMAZON_TRUST_ROOTS.as_bytes()).collect::<Result<Vec<_>, _>>().expect("PEM");
        assert_eq!(certs.len(), 5, "Amazon Root CA 1 to 4 and Starfield Services G2");
        for cert in &certs {
            webpki::anchor_from_trusted_cert(cert).expect("a trust anchor rustls accepts");
        }
    }

    #[test]
    fn on_lambda_region_and_role_credentials_come_straight_from_the_environment() {
        use super::TakenFromEnvironment;
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
        };
        const LAMBDA: [(&str, &str); 4] = [
            ("AWS_LAMBDA_FUNCTION_NAME", "granary-acknowledgement"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "ASIA"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ];
        assert_eq!(TakenFromEnvironment::of(env(&LAMBDA)), TakenFromEnvironment { credentials: true, region: Some("eu-west-3".into()) });
        // Off Lambda (granary-local, the CLI) a profile, SSO or an instance role may be what is meant.
        assert_eq!(TakenFromEnvironment::of(env(&LAMBDA[1..])), TakenFromEnvironment { credentials: false, region: None });
        // A key without its secret is no credential: the default chain decides.
        const HALF: [(&str, &str); 3] = [("AWS_LAMBDA_FUNCTION_NAME", "f"), ("AWS_ACCESS_KEY_ID", "ASIA"), ("AWS_SECRET_ACCESS_KEY", "")];
        assert_eq!(TakenFromEnvironment::of(env(&HALF)), TakenFromEnvironment { credentials: false, region: None });
    }
}
