//! A local AWS emulator for tests and benchmarks: moto server (PyPI `moto[server]`), installed into a
//! virtual environment when missing, started on 127.0.0.1 on a free port, and stopped when the process
//! that started it exits (a watchdog kills it), so nothing is left running.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the virtual environment with moto lives: `GRANARY_MOTO_VENV`, else `target/moto-venv` of the
/// workspace.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("GRANARY_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/moto-venv"))
}

/// Installs moto into `venv` unless it is there; returns the `moto_server` executable.
pub fn ensure_moto(venv: &Path) -> Result<PathBuf, String> {
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return Ok(server);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() { Ok(()) } else { Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr))) }
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(venv), "python3 -m venv (install python3-venv)")?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "moto[server]"]), "pip install moto[server]")?;
    if server.exists() { Ok(server) } else { Err(format!("{} missing after installing moto", server.display())) }
}

/// Starts moto on a free loopback port, stopped when this process exits; returns its endpoint URL.
pub fn start_moto() -> Result<String, String> {
    let server = ensure_moto(&venv_dir())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let watchdog = r#""$0" -H 127.0.0.1 -p "$1" >/dev/null 2>&1 & m=$!
while kill -0 "$2" 2>/dev/null && kill -0 "$m" 2>/dev/null; do sleep 1; done
kill "$m" 2>/dev/null
sleep 2
kill -9 "$m" 2>/dev/null"#;
    Command::new("sh")
        .args(["-c", watchdog])
        .arg(&server)
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("moto did not listen on 127.0.0.1:{port} within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!("http://127.0.0.1:{port}"))
}

/// One moto for the whole process: `GRANARY_MOTO_ENDPOINT` when set (one already running), else one
/// started on first use. Panics with the reason when none can be had: tests need it and are not skipped.
pub fn shared_moto() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| match std::env::var("GRANARY_MOTO_ENDPOINT") {
        Ok(url) if !url.is_empty() => url,
        _ => start_moto().unwrap_or_else(|e| panic!("no AWS emulator for the tests: {e}")),
    })
}

/// Options reaching `endpoint` with moto's fixed test credentials, names under `prefix`.
pub fn options(endpoint: &str, prefix: &str) -> crate::AwsOptions {
    crate::AwsOptions {
        name_prefix: prefix.to_owned(),
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        static_credentials: Some(("testing".into(), "testing".into())),
        counter: None,
    }
}
