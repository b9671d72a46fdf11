//! `granary-bench cold-start`: each function's release binary started against a local Lambda Runtime
//! API (the three routes a function uses, served here on 127.0.0.1), `--runs` times, its starts
//! alternating with those of the `lambda-hello` baseline built with the same profile, to which it is
//! compared. For each start it times, from the process's spawn: the first
//! `GET /runtime/invocation/next` (its init: logging, configuration, the template's resources, the
//! SDK clients) and the answer to its first event (a response or an error). The events
//! need no AWS call where the trigger allows (an empty SQS batch, an HTTP route that does not exist);
//! a scheduled function's first event reaches AWS, pointed at a closed local port with one attempt,
//! so its answer is an error that comes at once.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One start being measured.
#[derive(Default)]
struct Start {
    event: Vec<u8>,
    served: bool,
    first_next: Option<Instant>,
    answered: Option<(Instant, bool)>,
}

type Shared = Arc<(Mutex<Start>, tokio::sync::Notify)>;

async fn next(State(shared): State<Shared>) -> impl IntoResponse {
    let event = {
        let mut s = shared.0.lock().unwrap();
        s.first_next.get_or_insert_with(Instant::now);
        if s.served { None } else { Some(s.event.clone()) }
    };
    let Some(event) = event else {
        // The one event is served: the function waits here until it is stopped.
        std::future::pending::<()>().await;
        unreachable!()
    };
    shared.0.lock().unwrap().served = true;
    let mut headers = HeaderMap::new();
    let deadline = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() + 60_000;
    headers.insert("lambda-runtime-aws-request-id", HeaderValue::from_static("bench-request-1"));
    headers.insert("lambda-runtime-deadline-ms", HeaderValue::from_str(&deadline.to_string()).unwrap());
    headers.insert("lambda-runtime-invoked-function-arn", HeaderValue::from_static("arn:aws:lambda:eu-west-1:123456789012:function:bench"));
    headers.insert("lambda-runtime-trace-id", HeaderValue::from_static("Root=1-00000000-000000000000000000000000;Sampled=0"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, event)
}

async fn answered(shared: &Shared, ok: bool) -> StatusCode {
    shared.0.lock().unwrap().answered.get_or_insert((Instant::now(), ok));
    shared.1.notify_one();
    StatusCode::ACCEPTED
}

async fn response(State(shared): State<Shared>, Path(_id): Path<String>) -> StatusCode {
    answered(&shared, true).await
}

async fn error(State(shared): State<Shared>, Path(_id): Path<String>) -> StatusCode {
    answered(&shared, false).await
}

async fn init_error(State(shared): State<Shared>) -> StatusCode {
    answered(&shared, false).await
}

/// The first event a function of this trigger gets.
fn event_for(trigger: &str) -> serde_json::Value {
    match trigger {
        "SQS" => serde_json::json!({"Records": []}),
        "HttpApi" => serde_json::json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/no-such-route", "rawQueryString": "", "headers": {},
            "requestContext": {"accountId": "123456789012", "apiId": "bench", "domainName": "bench", "domainPrefix": "bench",
                "http": {"method": "GET", "path": "/no-such-route", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "bench"},
                "requestId": "bench", "routeKey": "$default", "stage": "$default", "time": "24/Nov/2026:00:00:00 +0000", "timeEpoch": 0},
            "isBase64Encoded": false
        }),
        _ => serde_json::json!({"version": "0", "id": "bench", "detail-type": "Scheduled Event", "source": "aws.scheduler",
            "account": "123456789012", "time": "2026-11-24T00:00:00Z", "region": "eu-west-1", "resources": [], "detail": {}}),
    }
}

/// The functions of the template and the trigger of each (its first event's type).
fn functions() -> Vec<(String, String)> {
    let template: serde_yaml::Value = serde_yaml::from_str(granary_resources::TEMPLATE).expect("the template");
    let mut out = Vec::new();
    for (_, r) in template["Resources"].as_mapping().expect("resources") {
        if r["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let binary = r["Metadata"]["BuildProperties"]["Binary"].as_str().expect("a binary").to_owned();
        let trigger = r["Properties"]["Events"]
            .as_mapping()
            .and_then(|events| events.values().next())
            .and_then(|e| e["Type"].as_str())
            .unwrap_or("ScheduleV2")
            .to_owned();
        out.push((binary, trigger));
    }
    out.sort();
    out
}

/// The CA bundle a function reads at its cold start: the template's `SSL_CERT_FILE` where this machine
/// has it (an Amazon Linux layout), else this machine's bundle (Debian's), so that each start reads one
/// bundle as it does in the cloud.
fn cert_file() -> Option<String> {
    let template: serde_yaml::Value = serde_yaml::from_str(granary_resources::TEMPLATE).expect("the template");
    let deployed = template["Globals"]["Function"]["Environment"]["Variables"]["SSL_CERT_FILE"].as_str().map(str::to_owned);
    deployed.into_iter().chain(["/etc/ssl/certs/ca-certificates.crt".to_owned()]).find(|p| FsPath::new(p).is_file())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// The starts of one binary: init and first answer of each, in milliseconds, and how many first
/// events were answered with a response (not an error).
#[derive(Default)]
struct Starts {
    inits: Vec<f64>,
    firsts: Vec<f64>,
    ok: usize,
}

/// Where a start reaches: the runtime API, the closed port AWS calls go to, the CA bundle.
struct Target<'a> {
    shared: &'a Shared,
    api: &'a str,
    closed: u16,
    certs: Option<String>,
}

/// Starts `binary` once, adding its figures to `starts`.
async fn start_once(binary: &FsPath, trigger: &str, starts: &mut Starts, target: &Target<'_>) {
    let Target { shared, api, closed, certs } = target;
    let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("function").to_owned();
    *shared.0.lock().unwrap() = Start { event: event_for(trigger).to_string().into_bytes(), ..Start::default() };
    let started = Instant::now();
    let mut command = tokio::process::Command::new(binary);
    command.env_clear();
    if let Some(certs) = &certs {
        command.env("SSL_CERT_FILE", certs);
    }
    let mut child = command
        .env("PATH", "/usr/bin:/bin")
        .env("AWS_LAMBDA_RUNTIME_API", api)
        .env("AWS_LAMBDA_FUNCTION_NAME", &name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        // Nothing listens there, and one attempt: a call to AWS fails at once.
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("GRANARY_ORDER_TOKEN_SECRET", "cold-start-bench-secret-of-32-bytes-or-more")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if shared.0.lock().unwrap().answered.is_some() {
                return;
            }
            shared.1.notified().await;
        }
    })
    .await;
    let _ = child.kill().await;
    assert!(answered.is_ok(), "{name} answered no event within 20 s");
    let s = shared.0.lock().unwrap();
    if let Some(at) = s.first_next {
        starts.inits.push(at.duration_since(started).as_secs_f64() * 1000.0);
    }
    let (at, was_ok) = s.answered.expect("answered");
    starts.firsts.push(at.duration_since(started).as_secs_f64() * 1000.0);
    starts.ok += usize::from(was_ok);
}

/// Runs the benchmark over the binaries in `dir` (a release build of the workspace).
pub async fn run(dir: PathBuf, runs: usize) {
    let shared: Shared = Arc::new((Mutex::new(Start::default()), tokio::sync::Notify::new()));
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a local port");
    let api = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A port nobody listens on: bound, then let go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");

    println!("cold start, {runs} starts each, median from spawn (ms), release binaries in {}", dir.display());
    println!("SSL_CERT_FILE={}", cert_file().unwrap_or_else(|| "(unset: no CA bundle found)".to_owned()));
    println!(
        "{:<20} {:>10} {:>9} {:>12} {:>11} {:>9} {:>11}",
        "function", "trigger", "init", "first event", "hello init", "vs hello", "size (MB)"
    );
    let hello = dir.join("lambda-hello");
    let target = Target { shared: &shared, api: &api, closed, certs: cert_file() };
    let size = |p: &FsPath| std::fs::metadata(p).map(|m| m.len() as f64 / 1_048_576.0).unwrap_or(f64::NAN);
    // Each function's starts alternate with lambda-hello's (which goes first changes each time), and
    // each is compared with the hello starts made beside it: a hello measured once, first, moved
    // between 1.6 and 2.3 ms from run to run while the functions held within 0.1 ms.
    let mut all_hello = Starts::default();
    for (binary, trigger) in functions() {
        let path = dir.join(&binary);
        if !path.exists() {
            // A partial run (one function rebuilt after a change) measures what is there.
            println!("{binary:<20} {trigger:>10} not built");
            continue;
        }
        let (mut beside, mut starts) = (Starts::default(), Starts::default());
        for run in 0..runs {
            if run % 2 == 0 {
                start_once(&hello, "SQS", &mut beside, &target).await;
                start_once(&path, &trigger, &mut starts, &target).await;
            } else {
                start_once(&path, &trigger, &mut starts, &target).await;
                start_once(&hello, "SQS", &mut beside, &target).await;
            }
        }
        let hello_init = median(beside.inits.clone());
        all_hello.inits.extend(beside.inits);
        all_hello.firsts.extend(beside.firsts);
        let (init, first) = (median(starts.inits), median(starts.firsts));
        let answer = if starts.ok == runs { "" } else { " (error: reaches AWS)" };
        println!(
            "{:<20} {:>10} {:>9.1} {:>12.1} {:>11.1} {:>8.2}x {:>11.1}{answer}",
            binary,
            trigger,
            init,
            first,
            hello_init,
            init / hello_init,
            size(&path)
        );
    }
    let (hello_init, hello_first) = (median(all_hello.inits), median(all_hello.firsts));
    println!(
        "{:<20} {:>10} {:>9.1} {:>12.1} {:>11.1} {:>9} {:>11.1}",
        "lambda-hello",
        "(all)",
        hello_init,
        hello_first,
        hello_init,
        "1.00x",
        size(&hello)
    );
}
