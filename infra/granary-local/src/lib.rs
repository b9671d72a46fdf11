//! `granary-local`: Granary on one machine. `serve` runs every function in one process (the HTTP API as
//! API Gateway would call it, queue pollers as SQS event source mappings, schedules as EventBridge),
//! on the embedded backend; `token` mints a bearer token that a runner on the same data directory
//! accepts.

pub mod apigw;
pub mod auth;
pub mod cli;
pub mod resources;
pub mod serve;
pub mod sources;

use clap::{Parser, Subcommand, ValueEnum};
use granary_aws::{Aws, AwsOptions};
use granary_embedded::{Embedded, EmbeddedOptions};
use granary_ports::{Backend, Resources};
pub use serve::BackendChoice;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc serves the runner's Rust allocations (and those of the `granary` command and the tests
/// that link this library). Under glibc's malloc, held to two arenas, 200 connections writing
/// contended for the arenas' locks (basket mutations: 8,100 a second at 200 connections, 16,600 with
/// jemalloc), and a soak's resident memory crept up with freed space glibc kept in its heap.
/// jemalloc's background thread hands unused pages back on a timer, and its statistics tell the
/// memory in use apart from what the allocator keeps ([`heap_bytes`]).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// What the allocator reports, in bytes: memory in use by the program (`allocated`), and the pages
/// it holds resident for it, free space within them included (`resident`). `None` where jemalloc does
/// not serve the process.
pub fn heap_bytes() -> Option<(u64, u64)> {
    #[cfg(not(target_env = "msvc"))]
    {
        // The statistics are a snapshot, refreshed by advancing the epoch.
        tikv_jemalloc_ctl::epoch::advance().ok()?;
        let allocated = tikv_jemalloc_ctl::stats::allocated::read().ok()?;
        let resident = tikv_jemalloc_ctl::stats::resident::read().ok()?;
        Some((allocated as u64, resident as u64))
    }
    #[cfg(target_env = "msvc")]
    None
}

/// What can stop granary-local, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The address cannot be bound or served.
    #[error("cannot serve on {0}: {1} (is another process using the port? pick another with --listen)")]
    Listen(String, String),
    /// The data directory's database cannot be opened.
    #[error("embedded backend: {0}")]
    Backend(String),
    /// The signing key cannot be read or created.
    #[error("{0} (delete the keys directory to start with a new key)")]
    Key(String),
    /// A configuration value is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The AWS backend is asked for but not part of this build.
    #[error(
        "--backend aws is not available in this build yet: the AWS implementation of the ports is the next foundation slice; use --backend embedded"
    )]
    AwsBackendUnavailable,
}

/// Opens the backend of `choice` over `resources`: the embedded one in `data_dir` (with `tune` applied
/// to its options), or AWS from the usual variables (`AWS_ENDPOINT_URL` for an emulator), creating the
/// resources first when `provision` is set.
pub async fn open_backend(
    choice: BackendChoice,
    data_dir: &Path,
    resources: Resources,
    provision: bool,
    tune: impl FnOnce(&mut EmbeddedOptions),
) -> Result<(Backend, Option<Embedded>), LocalError> {
    match choice {
        BackendChoice::Embedded => {
            let mut options = EmbeddedOptions::new(data_dir, resources);
            tune(&mut options);
            let embedded = Embedded::open(options).map_err(|e| LocalError::Backend(e.to_string()))?;
            Ok((embedded.backend(), Some(embedded)))
        }
        BackendChoice::Aws => {
            let options =
                AwsOptions { name_prefix: granary_lambda::config::env_or("GRANARY_AWS_NAME_PREFIX", ""), ..AwsOptions::default() };
            let aws = Aws::connect(&resources, options).await;
            if provision {
                granary_aws::provision::provision(&aws, &resources).await.map_err(|e| LocalError::Backend(e.to_string()))?;
            }
            Ok((aws.backend(), None))
        }
    }
}

/// The command line.
#[derive(Parser)]
#[command(name = "granary-local", version, about = "Granary on one machine: every function in one process, no AWS needed")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    Embedded,
    Aws,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API, poll the queues and fire the schedules.
    Serve {
        /// Data directory (database, blobs, keys).
        #[arg(long, env = "GRANARY_LOCAL_DATA_DIR", default_value = ".granary")]
        data_dir: PathBuf,
        /// Address to listen on; port 0 picks a free port (the chosen address is printed).
        #[arg(long, env = "GRANARY_LOCAL_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Which implementation of the ports to use: `aws` reaches AWS, or an emulator named by AWS_ENDPOINT_URL.
        #[arg(long, value_enum, env = "GRANARY_LOCAL_BACKEND", default_value = "embedded")]
        backend: BackendKind,
        /// Take tables, queues and buckets from this SAM template instead of the built-in copy.
        #[arg(long, env = "GRANARY_LOCAL_TEMPLATE")]
        template: Option<PathBuf>,
        /// With --backend aws: create the template's tables, queues and buckets first (for an emulator).
        #[arg(long, env = "GRANARY_LOCAL_PROVISION")]
        provision: bool,
        /// Concurrent feature-ingest invocations.
        #[arg(long, env = "GRANARY_LOCAL_INGEST_WORKERS", default_value_t = 2)]
        ingest_workers: usize,
        /// Concurrent storage-worker invocations (each copies one request's files).
        #[arg(long, env = "GRANARY_LOCAL_STORAGE_WORKERS", default_value_t = 2)]
        storage_workers: usize,
        /// Seconds a nearline restore takes on the embedded backend.
        #[arg(long, env = "GRANARY_LOCAL_RESTORE_DELAY_SECS", default_value_t = 60)]
        restore_delay_secs: u64,
        /// Seconds between two runs of the outbox-relay schedule.
        #[arg(long, env = "GRANARY_LOCAL_RELAY_EVERY_SECS", default_value_t = 5)]
        relay_every_secs: u64,
        /// Seconds between two runs of the delayed-release schedule.
        #[arg(long, env = "GRANARY_LOCAL_RELEASE_EVERY_SECS", default_value_t = 5)]
        release_every_secs: u64,
        /// Seconds between two runs of the order-maintenance schedule.
        #[arg(long, env = "GRANARY_LOCAL_MAINTENANCE_EVERY_SECS", default_value_t = 5)]
        maintenance_every_secs: u64,
    },
    /// Print an RS256 bearer token that a runner on the same data directory accepts.
    Token {
        /// Data directory whose key signs the token.
        #[arg(long, env = "GRANARY_LOCAL_DATA_DIR", default_value = ".granary")]
        data_dir: PathBuf,
        /// The user (the `sub` claim; also `email` when it contains '@').
        #[arg(long)]
        user: String,
        /// Add the `admin` group.
        #[arg(long)]
        admin: bool,
        /// Groups, comma-separated (for example producer,public).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Seconds the token is valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Print the OpenAPI document of the HTTP API (also served at /openapi.json).
    Openapi,
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<(), LocalError> {
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            backend,
            template,
            provision,
            ingest_workers,
            storage_workers,
            restore_delay_secs,
            relay_every_secs,
            release_every_secs,
            maintenance_every_secs,
        } => {
            granary_lambda::init_logging();
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| LocalError::Config(e.to_string()))?;
            runtime.block_on(serve::serve(serve::ServeOptions {
                data_dir,
                backend: match backend {
                    BackendKind::Embedded => serve::BackendChoice::Embedded,
                    BackendKind::Aws => serve::BackendChoice::Aws,
                },
                template,
                provision,
                listen,
                ingest_workers,
                storage_workers,
                restore_delay: Duration::from_secs(restore_delay_secs),
                relay_every: Duration::from_secs(relay_every_secs.max(1)),
                release_every: Duration::from_secs(release_every_secs.max(1)),
                maintenance_every: Duration::from_secs(maintenance_every_secs.max(1)),
            }))
        }
        Command::Token { data_dir, user, admin, mut groups, ttl } => {
            let config = granary_lambda::Config::from_env();
            if admin && !groups.iter().any(|g| g == "admin") {
                groups.push("admin".into());
            }
            let issuer = auth::LocalIssuer::load_or_create(&data_dir, &config.groups_claim).map_err(LocalError::Key)?;
            let token = issuer.mint(&user, &groups, ttl, chrono::Utc::now().timestamp()).map_err(LocalError::Key)?;
            println!("{token}");
            Ok(())
        }
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&apigw::openapi_document()).unwrap_or_default());
            Ok(())
        }
    }
}

/// Parses the command line, runs it and turns the outcome into an exit code.
pub fn main_with_args() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("granary-local: {e}");
            ExitCode::from(2)
        }
    }
}
