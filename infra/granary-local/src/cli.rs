//! `granary`: the command line of producers and operators. It submits a directory of GeoJSON files or
//! an NDJSON file as creation, patch or deletion requests, over the HTTP API or straight onto the
//! feature queues, in batches, with a progress bar and a closing summary of what was granted and
//! denied and why; it follows requests until they are final, and lists requests by state.
//!
//! It reads the configuration the functions read (`GRANARY_*` names, the AWS variables), so it works
//! against granary-local (HTTP, or the data directory with `--via queue`), moto and AWS
//! (`--via queue --backend aws`, with `AWS_ENDPOINT_URL` for moto).

use clap::{Args, Parser, Subcommand, ValueEnum};
use granary_domain::request::{
    FeatureDeletionRequestEvent, FeatureUpdateRequestEvent, UpdateMetadata, validate_creation, validate_deletion, validate_patch,
};
use granary_domain::{CreationMetadata, FeatureCreationRequestEvent, FeatureRequestType, Priority, RequestState};
use granary_lambda::Config;
use granary_ports::{Backend, OutgoingMessage};
use granary_stores::requests::{RequestFilter, RequestReader, RequestRecord};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Send batches of ten a queue submission sends at once.
const SENDS_AT_ONCE: usize = 10;

/// What can stop the command line, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The input cannot be read at all.
    #[error("cannot read {0}: {1}")]
    Input(String, String),
    /// Granary refused the caller.
    #[error("{0} (get a token with `granary-local token --user you@example.org --groups producer`, pass it with --token or GRANARY_TOKEN)")]
    Refused(String),
    /// Granary cannot be reached or failed.
    #[error("cannot reach Granary: {0}")]
    Unreachable(String),
    /// The backend cannot be opened.
    #[error("{0}")]
    Backend(String),
    /// Requests were still not final when the time ran out.
    #[error("{0} request(s) still not final after {1} s (follow them again with `granary follow --ids-file …`)")]
    NotFinal(usize, u64),
}

/// The command line.
#[derive(Parser)]
#[command(name = "granary", version, about = "Submit, follow and list Granary feature requests")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: Target,
    /// Print the summary as one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
}

/// How to reach Granary.
#[derive(Args)]
struct Target {
    /// Through the HTTP API, or straight onto the feature queues (and the requests table to follow).
    #[arg(long, value_enum, env = "GRANARY_CLI_VIA", default_value = "http", global = true)]
    via: Via,
    /// The HTTP API's base URL.
    #[arg(long, env = "GRANARY_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// Bearer token for the HTTP API.
    #[arg(long, env = "GRANARY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// With --via queue: a granary-local data directory (embedded) or AWS (the AWS variables).
    #[arg(long, value_enum, env = "GRANARY_CLI_BACKEND", default_value = "embedded", global = true)]
    backend: BackendKind,
    /// With --via queue --backend embedded: the data directory.
    #[arg(long, env = "GRANARY_LOCAL_DATA_DIR", default_value = ".granary", global = true)]
    data_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    Http,
    Queue,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    Embedded,
    Aws,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Creation,
    Patch,
    Deletion,
}

#[derive(Subcommand)]
enum Command {
    /// Submit every feature of a directory of GeoJSON files (a Feature or a FeatureCollection each) or
    /// of an NDJSON file (a Feature per line; for deletions a URN or {"urn": …} per line).
    Submit {
        /// The directory or NDJSON file.
        path: PathBuf,
        /// What the features are.
        #[arg(long, value_enum, default_value = "creation")]
        kind: Kind,
        /// Session owner of creations.
        #[arg(long, default_value = "granary-cli")]
        session_owner: String,
        /// Session of creations (today's date when not given).
        #[arg(long)]
        session: Option<String>,
        /// Priority: LOW, NORMAL or HIGH.
        #[arg(long, default_value = "NORMAL", value_parser = parse_priority)]
        priority: Priority,
        /// Request owner with --via queue (over HTTP it is the token's user).
        #[arg(long, default_value = "granary-cli")]
        owner: String,
        /// Features per HTTP submission (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        batch: u16,
        /// Then follow the granted requests until they are final.
        #[arg(long)]
        follow: bool,
        /// Write the granted request ids here, one per line, to follow later.
        #[arg(long)]
        ids_out: Option<PathBuf>,
        /// How long --follow waits.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Wait until requests are final (SUCCESS, DENIED or ERROR).
    Follow {
        /// Request ids.
        ids: Vec<String>,
        /// A file of request ids, one per line.
        #[arg(long)]
        ids_file: Option<PathBuf>,
        /// How long to wait.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// List requests by state (or by session), oldest first (admin over HTTP).
    Requests {
        /// GRANTED, DENIED, SUCCESS or ERROR.
        #[arg(long)]
        state: Option<String>,
        /// With --session: the requests of one session.
        #[arg(long)]
        session_owner: Option<String>,
        /// With --session-owner.
        #[arg(long)]
        session: Option<String>,
        /// CREATION, PATCH, DELETION or NOTIFICATION.
        #[arg(long = "type")]
        request_type: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    serde_json::from_value(Value::from(s.to_ascii_uppercase())).map_err(|_| format!("{s:?} is not LOW, NORMAL or HIGH"))
}

/// One feature read from the input, with where it came from.
struct Entry {
    /// `file` or `file:line`.
    source: String,
    /// The request body, or why it could not be read.
    body: Result<Value, String>,
}

/// What a submission came to.
#[derive(Default, serde::Serialize)]
struct Summary {
    granted: usize,
    denied: usize,
    /// Granted request ids, in input order.
    #[serde(rename = "requestIds")]
    request_ids: Vec<String>,
    /// Denied entries: source and errors.
    #[serde(rename = "deniedEntries")]
    denied_entries: Vec<(String, Vec<String>)>,
    /// After --follow: final states and their counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    followed: Option<FollowSummary>,
}

/// Where followed requests ended.
#[derive(Default, serde::Serialize)]
struct FollowSummary {
    /// Count by final state.
    states: BTreeMap<String, usize>,
    /// Requests denied or in error, with their errors.
    failures: Vec<(String, String, Vec<String>)>,
    /// Requests not final when the time ran out.
    pending: Vec<String>,
}

/// Parses the command line, runs it and turns the outcome into an exit code (1 when something was
/// denied or failed, 2 when the command could not run).
pub fn main_with_args() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("granary: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("granary: {e}");
            ExitCode::from(2)
        }
    }
}

/// The way to Granary the command uses.
enum Client {
    Http { http: reqwest::Client, url: String, token: Option<String> },
    Queue { backend: Backend, config: Box<Config> },
}

/// Runs one command; true when everything was granted and, followed, succeeded.
async fn run(cli: Cli) -> Result<bool, CliError> {
    let client = match cli.target.via {
        Via::Http => Client::Http {
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().map_err(|e| CliError::Unreachable(e.to_string()))?,
            url: cli.target.url.trim_end_matches('/').to_owned(),
            token: cli.target.token.clone(),
        },
        Via::Queue => {
            let choice = match cli.target.backend {
                BackendKind::Embedded => crate::BackendChoice::Embedded,
                BackendKind::Aws => crate::BackendChoice::Aws,
            };
            let resources = crate::resources::load(None).map_err(CliError::Backend)?;
            let (backend, _) = crate::open_backend(choice, &cli.target.data_dir, resources, false, |_| {})
                .await
                .map_err(|e| CliError::Backend(e.to_string()))?;
            Client::Queue { backend, config: Box::new(Config::from_env()) }
        }
    };
    match cli.command {
        Command::Submit { path, kind, session_owner, session, priority, owner, batch, follow, ids_out, timeout_secs } => {
            let entries = read_entries(&path, kind)?;
            let session = session.unwrap_or_else(|| chrono::Utc::now().format("%Y-%m-%d").to_string());
            let spec = Submission { kind, priority, session_owner, session, owner, batch: usize::from(batch) };
            let mut summary = submit(&client, &spec, entries).await?;
            if let Some(out) = ids_out {
                std::fs::write(&out, summary.request_ids.join("\n") + "\n")
                    .map_err(|e| CliError::Input(out.display().to_string(), e.to_string()))?;
            }
            if follow && !summary.request_ids.is_empty() {
                summary.followed = Some(follow_requests(&client, &summary.request_ids, timeout_secs).await?);
            }
            print_submission(&summary, cli.json);
            let followed_ok = summary.followed.as_ref().is_none_or(|f| f.pending.is_empty() && f.failures.is_empty());
            if let Some(f) = &summary.followed
                && !f.pending.is_empty()
            {
                return Err(CliError::NotFinal(f.pending.len(), timeout_secs));
            }
            Ok(summary.denied == 0 && followed_ok)
        }
        Command::Follow { mut ids, ids_file, timeout_secs } => {
            if let Some(file) = ids_file {
                let text = std::fs::read_to_string(&file).map_err(|e| CliError::Input(file.display().to_string(), e.to_string()))?;
                ids.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
            }
            let followed = follow_requests(&client, &ids, timeout_secs).await?;
            print_follow(&followed, cli.json);
            if !followed.pending.is_empty() {
                return Err(CliError::NotFinal(followed.pending.len(), timeout_secs));
            }
            Ok(followed.failures.is_empty())
        }
        Command::Requests { state, session_owner, session, request_type, limit } => {
            let records = list_requests(&client, state, session_owner, session, request_type, limit).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&records).unwrap_or_default());
            } else {
                for r in &records {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        r["requestId"].as_str().unwrap_or_default(),
                        r["type"].as_str().unwrap_or_default(),
                        r["state"].as_str().unwrap_or_default(),
                        r["step"].as_str().unwrap_or_default(),
                        r["urn"].as_str().or(r["providerId"].as_str()).unwrap_or("-"),
                        r["errors"]
                            .as_array()
                            .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
                            .unwrap_or_default(),
                    );
                }
                eprintln!("{} request(s)", records.len());
            }
            Ok(true)
        }
    }
}

/// Reads the features of a directory of GeoJSON files or of an NDJSON file, in a stable order.
fn read_entries(path: &Path, kind: Kind) -> Result<Vec<Entry>, CliError> {
    let unreadable = |p: &Path, e: std::io::Error| CliError::Input(p.display().to_string(), e.to_string());
    let mut entries = Vec::new();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| unreadable(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "geojson"))
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let text = std::fs::read_to_string(&file).map_err(|e| unreadable(&file, e))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(v) if v["type"] == "FeatureCollection" => {
                    for (i, f) in v["features"].as_array().cloned().unwrap_or_default().into_iter().enumerate() {
                        entries.push(Entry { source: format!("{name}#{i}"), body: Ok(f) });
                    }
                }
                Ok(v) => entries.push(Entry { source: name, body: Ok(v) }),
                Err(e) => entries.push(Entry { source: name, body: Err(format!("not JSON: {e}")) }),
            }
        }
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let source = format!("{name}:{}", i + 1);
            let body = match (kind, serde_json::from_str::<Value>(line)) {
                (_, Ok(v)) => Ok(v),
                // A bare URN on a deletion line.
                (Kind::Deletion, Err(_)) if line.starts_with("URN:") => Ok(Value::from(line)),
                (_, Err(e)) => Err(format!("not JSON: {e}")),
            };
            entries.push(Entry { source, body });
        }
    }
    if entries.is_empty() {
        return Err(CliError::Input(path.display().to_string(), "no features found (.json/.geojson files, or NDJSON lines)".into()));
    }
    Ok(entries)
}

/// How to submit.
struct Submission {
    kind: Kind,
    priority: Priority,
    session_owner: String,
    session: String,
    owner: String,
    batch: usize,
}

impl Submission {
    fn request_type(&self) -> FeatureRequestType {
        match self.kind {
            Kind::Creation => FeatureRequestType::Creation,
            Kind::Patch => FeatureRequestType::Patch,
            Kind::Deletion => FeatureRequestType::Deletion,
        }
    }

    /// The URN a deletion line names.
    fn urn_of(v: &Value) -> Option<String> {
        v.as_str().or_else(|| v["urn"].as_str()).map(str::to_owned)
    }

    /// The SQS message body of one feature, checked as feature-api checks it.
    fn message_body(&self, feature: Value, tenant: &str) -> Result<Value, Vec<String>> {
        match self.kind {
            Kind::Creation => {
                let metadata = CreationMetadata {
                    session_owner: self.session_owner.clone(),
                    session: self.session.clone(),
                    priority: self.priority,
                    ..CreationMetadata::default()
                };
                let event = FeatureCreationRequestEvent { metadata, feature };
                validate_creation(&event)?;
                Ok(serde_json::to_value(&event).unwrap_or_default())
            }
            Kind::Patch => {
                let event = FeatureUpdateRequestEvent {
                    metadata: UpdateMetadata { priority: self.priority, ..UpdateMetadata::default() },
                    feature,
                };
                validate_patch(&event, tenant)?;
                Ok(serde_json::to_value(&event).unwrap_or_default())
            }
            Kind::Deletion => {
                let urn = Self::urn_of(&feature).ok_or_else(|| vec!["urn: a deletion line is a URN or {\"urn\": …}".to_owned()])?;
                let event = FeatureDeletionRequestEvent { urn, priority: self.priority };
                validate_deletion(&event, tenant)?;
                Ok(serde_json::to_value(&event).unwrap_or_default())
            }
        }
    }
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

async fn submit(client: &Client, spec: &Submission, entries: Vec<Entry>) -> Result<Summary, CliError> {
    let mut summary = Summary::default();
    let bar = progress(entries.len(), "submitting");
    let mut ready = Vec::new();
    for entry in entries {
        match entry.body {
            Ok(v) => ready.push((entry.source, v)),
            Err(e) => {
                summary.denied += 1;
                summary.denied_entries.push((entry.source, vec![e]));
                bar.inc(1);
            }
        }
    }
    match client {
        Client::Http { http, url, token } => {
            for chunk in ready.chunks(spec.batch) {
                let (method, body) = match spec.kind {
                    Kind::Creation => (
                        reqwest::Method::POST,
                        json!({"metadata": {"sessionOwner": spec.session_owner, "session": spec.session, "priority": spec.priority},
                               "features": chunk.iter().map(|(_, v)| v).collect::<Vec<_>>()}),
                    ),
                    Kind::Patch => (
                        reqwest::Method::PATCH,
                        json!({"metadata": {"priority": spec.priority}, "features": chunk.iter().map(|(_, v)| v).collect::<Vec<_>>()}),
                    ),
                    Kind::Deletion => (
                        reqwest::Method::DELETE,
                        json!({"priority": spec.priority,
                               "featuresUrns": chunk.iter().map(|(_, v)| Submission::urn_of(v).unwrap_or_default()).collect::<Vec<_>>()}),
                    ),
                };
                let answer = send_with_retries(http, method, &format!("{url}/features"), token.as_deref(), &body).await?;
                match answer {
                    Answer::Accepted(a) => {
                        for g in a["granted"].as_array().cloned().unwrap_or_default() {
                            summary.granted += 1;
                            summary.request_ids.push(g["requestId"].as_str().unwrap_or_default().to_owned());
                        }
                        for d in a["denied"].as_array().cloned().unwrap_or_default() {
                            let i = d["index"].as_u64().unwrap_or_default() as usize;
                            let errors = d["errors"].as_array().map(|e| e.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect());
                            summary.denied += 1;
                            summary
                                .denied_entries
                                .push((chunk.get(i).map(|c| c.0.clone()).unwrap_or_default(), errors.unwrap_or_default()));
                        }
                    }
                    Answer::AllDenied(errors) => {
                        // Every entry of the batch was denied: the problem lists `features[i].…` errors.
                        for (i, (source, _)) in chunk.iter().enumerate() {
                            let prefix = format!("features[{i}]");
                            let mine: Vec<String> = errors.iter().filter(|e| e.starts_with(&prefix)).cloned().collect();
                            summary.denied += 1;
                            summary.denied_entries.push((source.clone(), if mine.is_empty() { errors.clone() } else { mine }));
                        }
                    }
                }
                bar.inc(chunk.len() as u64);
            }
        }
        Client::Queue { backend, config } => {
            let queue = config.feature_queue(spec.priority).to_owned();
            let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut outgoing = Vec::new();
            for (source, feature) in ready {
                match spec.message_body(feature, &config.tenant) {
                    Ok(body) => {
                        let request_id = uuid::Uuid::now_v7().to_string();
                        outgoing.push(
                            OutgoingMessage::new(body.to_string())
                                .attribute("regards.request.type", spec.request_type().as_str())
                                .attribute("regards.request.id", request_id.clone())
                                .attribute("regards.request.owner", spec.owner.clone())
                                .attribute("regards.request.date", date.clone()),
                        );
                        summary.granted += 1;
                        summary.request_ids.push(request_id);
                    }
                    Err(errors) => {
                        summary.denied += 1;
                        summary.denied_entries.push((source, errors));
                        bar.inc(1);
                    }
                }
            }
            // Ten send batches at once: one SQLite transaction for the embedded queue, so that a
            // submission beside a busy runner waits for the write lock once per hundred messages.
            granary_ports::queue::send_all(backend.queue.as_ref(), &queue, outgoing, SENDS_AT_ONCE, |n| bar.inc(n as u64))
                .await
                .map_err(|e| CliError::Unreachable(e.to_string()))?;
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}

enum Answer {
    Accepted(Value),
    AllDenied(Vec<String>),
}

/// Sends one submission, retrying a few times while Granary answers 503 or cannot be reached.
async fn send_with_retries(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Answer, CliError> {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=5 {
        let mut req = http.request(method.clone(), url).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let last = attempt == 5;
        match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let answer: Value = res.json().await.unwrap_or(Value::Null);
                match status {
                    202 => return Ok(Answer::Accepted(answer)),
                    400 => {
                        let errors = answer["errors"].as_array().map(|e| e.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect());
                        return Ok(Answer::AllDenied(
                            errors.unwrap_or_else(|| vec![answer["detail"].as_str().unwrap_or("bad request").to_owned()]),
                        ));
                    }
                    401 | 403 => {
                        return Err(CliError::Refused(format!("HTTP {status}: {}", answer["detail"].as_str().unwrap_or_default())));
                    }
                    503 if !last => {}
                    _ => return Err(CliError::Unreachable(format!("{url} answered HTTP {status}: {answer}"))),
                }
            }
            Err(e) if !last => tracing::debug!(error = %e, attempt, "submission not sent; retrying"),
            Err(e) => return Err(CliError::Unreachable(format!("{url}: {e}"))),
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    Err(CliError::Unreachable(format!("{url} stayed unavailable")))
}

/// One request's record, as the HTTP API shows it; None while it is not recorded yet.
async fn get_request(client: &Client, id: &str) -> Result<Option<Value>, CliError> {
    match client {
        Client::Http { http, url, token } => {
            let mut req = http.get(format!("{url}/features/requests/{id}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.map_err(|e| CliError::Unreachable(e.to_string()))?;
            match res.status().as_u16() {
                200 => Ok(res.json().await.ok()),
                // Not recorded yet: ingest has not taken it.
                404 => Ok(None),
                401 | 403 => Err(CliError::Refused(format!("HTTP {}", res.status()))),
                s => Err(CliError::Unreachable(format!("GET /features/requests/{id} answered HTTP {s}"))),
            }
        }
        Client::Queue { backend, config } => {
            let record =
                RequestReader::new(&config.requests_table).get(backend, id).await.map_err(|e| CliError::Unreachable(e.to_string()))?;
            Ok(record.map(|r| serde_json::to_value(&r).unwrap_or_default()))
        }
    }
}

fn is_final(record: &Value) -> bool {
    matches!(record["state"].as_str(), Some("SUCCESS" | "DENIED" | "ERROR"))
}

/// Polls every request until it is final or `timeout_secs` pass, a few at a time.
async fn follow_requests(client: &Client, ids: &[String], timeout_secs: u64) -> Result<FollowSummary, CliError> {
    let bar = progress(ids.len(), "following");
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut pending: Vec<String> = ids.to_vec();
    let mut out = FollowSummary::default();
    let mut pause = Duration::from_millis(100);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for chunk in pending.chunks(16) {
            let lookups = chunk.iter().map(|id| get_request(client, id));
            for (id, record) in chunk.iter().zip(futures::future::join_all(lookups).await) {
                match record? {
                    Some(r) if is_final(&r) => {
                        let state = r["state"].as_str().unwrap_or_default().to_owned();
                        if state != "SUCCESS" {
                            let errors = r["errors"].as_array().map(|e| e.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect());
                            out.failures.push((id.clone(), state.clone(), errors.unwrap_or_default()));
                        }
                        *out.states.entry(state).or_default() += 1;
                        bar.inc(1);
                    }
                    _ => still.push(id.clone()),
                }
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    bar.finish_and_clear();
    out.pending = pending;
    Ok(out)
}

async fn list_requests(
    client: &Client,
    state: Option<String>,
    session_owner: Option<String>,
    session: Option<String>,
    request_type: Option<String>,
    limit: usize,
) -> Result<Vec<Value>, CliError> {
    let mut out = Vec::new();
    match client {
        Client::Http { http, url, token } => {
            let mut query: Vec<(String, String)> = Vec::new();
            for (k, v) in [("state", &state), ("sessionOwner", &session_owner), ("session", &session), ("type", &request_type)] {
                if let Some(v) = v {
                    query.push((k.to_owned(), v.clone()));
                }
            }
            query.push(("size".into(), limit.clamp(1, 1000).to_string()));
            let mut next = Some(format!("{url}/features/requests"));
            let mut first = true;
            while let Some(u) = next.take() {
                let mut req = http.get(&u);
                if first {
                    req = req.query(&query);
                    first = false;
                }
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let res = req.send().await.map_err(|e| CliError::Unreachable(e.to_string()))?;
                let status = res.status().as_u16();
                let page: Value = res.json().await.unwrap_or(Value::Null);
                match status {
                    200 => {}
                    401 | 403 => return Err(CliError::Refused(format!("HTTP {status}: listing requests needs the admin group"))),
                    400 => return Err(CliError::Input("the filter".into(), page["errors"].to_string())),
                    _ => return Err(CliError::Unreachable(format!("GET /features/requests answered HTTP {status}"))),
                }
                out.extend(page["content"].as_array().cloned().unwrap_or_default());
                if out.len() < limit
                    && let Some(href) =
                        page["links"].as_array().and_then(|l| l.iter().find(|l| l["rel"] == "next")).and_then(|l| l["href"].as_str())
                {
                    next = Some(format!("{url}{href}"));
                }
            }
        }
        Client::Queue { backend, config } => {
            let mut filter = RequestFilter::default();
            if let Some(s) = &state {
                filter.state = Some(
                    serde_json::from_value::<RequestState>(Value::from(s.clone()))
                        .map_err(|_| CliError::Input("--state".into(), format!("{s:?} is not GRANTED, DENIED, SUCCESS or ERROR")))?,
                );
            }
            if let (Some(o), Some(s)) = (&session_owner, &session) {
                filter.session = Some((o.clone(), s.clone()));
            }
            if let Some(t) = &request_type {
                filter.request_type = Some(
                    FeatureRequestType::parse(t).ok_or_else(|| CliError::Input("--type".into(), format!("{t:?} is not a request type")))?,
                );
            }
            let reader = RequestReader::new(&config.requests_table);
            let mut after = None;
            loop {
                let page = reader
                    .list(backend, &filter, limit.clamp(1, 1000), after.as_deref())
                    .await
                    .map_err(|e| CliError::Backend(e.to_string()))?;
                out.extend(page.content.iter().map(|r: &RequestRecord| serde_json::to_value(r).unwrap_or_default()));
                match page.next {
                    Some(n) if out.len() < limit => after = Some(n),
                    _ => break,
                }
            }
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// The denied reasons, most frequent first, with an example source each.
fn reasons(entries: &[(String, Vec<String>)]) -> Vec<(String, usize, String)> {
    let mut by: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (source, errors) in entries {
        for e in errors {
            // Group "features[3].id: …" and "features[7].id: …" together.
            let key = e.split_once("].").map_or(e.as_str(), |(_, rest)| rest).to_owned();
            let slot = by.entry(key).or_insert((0, source.clone()));
            slot.0 += 1;
        }
    }
    let mut out: Vec<_> = by.into_iter().map(|(reason, (n, example))| (reason, n, example)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn print_submission(summary: &Summary, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string(summary).unwrap_or_default());
        return;
    }
    println!("granted {}, denied {}", summary.granted, summary.denied);
    for (reason, n, example) in reasons(&summary.denied_entries) {
        println!("  denied ×{n}: {reason} (e.g. {example})");
    }
    if let Some(f) = &summary.followed {
        print_follow(f, false);
    }
}

fn print_follow(f: &FollowSummary, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string(f).unwrap_or_default());
        return;
    }
    let states: Vec<String> = f.states.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!(
        "final: {}{}",
        states.join(", "),
        if f.pending.is_empty() { String::new() } else { format!(", not final {}", f.pending.len()) }
    );
    let failures: Vec<(String, Vec<String>)> =
        f.failures.iter().map(|(id, state, errors)| (format!("{id} ({state})"), errors.clone())).collect();
    for (reason, n, example) in reasons(&failures) {
        println!("  failed ×{n}: {reason} (e.g. {example})");
    }
}
