//! Configured processings: what a dataset selection's `processBusinessId` runs after its suborder's
//! files are available, besides Granary's built-in `granary-pack`.
//!
//! The registry is JSON (`GRANARY_PROCESSES`), one entry per process id:
//!
//! ```json
//! { "ndvi":   { "command": ["python3", "/opt/ndvi.py", "--fast"], "scope": "FEATURE", "timeoutSecs": 600 },
//!   "thumbs": { "lambda": "arn:aws:lambda:eu-west-1:123456789012:function:thumbs", "scope": "SUBORDER" } }
//! ```
//!
//! A run gets a [`ProcessRequest`] (JSON): the files of one feature (scope `FEATURE`) or of the whole
//! suborder (scope `SUBORDER`), each with where to read it. A command reads the request on its standard
//! input, finds its inputs as local files (`path`) and writes its outputs into `outputDir`; it fails
//! by exiting with a non-zero status (its last lines of standard error become the files' cause). A
//! Lambda function gets the request as its event, reads its inputs from short-lived signed URLs (`url`),
//! writes its outputs under `outputBucket`/`outputPrefix` and answers a [`ProcessResponse`] naming
//! them (or `{"error": "..."}`). Either way, the outputs replace the run's inputs as the order's files.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Most outputs one run may produce (they are written in one transaction with two counters).
pub const MAX_OUTPUTS_PER_RUN: usize = 90;
/// File indexes kept for each run's outputs.
const OUTPUT_STRIDE: u64 = 100;
/// Most runs one suborder may need (a run is numbered by its first input's index, and a suborder holds
/// at most 5,000 files).
pub const MAX_RUNS: u64 = 5_000;
/// The first file index of processing outputs (past any suborder's inputs).
pub const FIRST_OUTPUT_INDEX: u64 = 100_000;
/// How long a run may take when its entry does not say, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;

/// What one run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProcessScope {
    /// All the suborder's files at once.
    #[default]
    Suborder,
    /// The files of one feature at a time.
    Feature,
}

/// How a process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessRunner {
    /// A program and its arguments, run on the machine (granary-local, or a Lambda layer).
    Command(Vec<String>),
    /// A Lambda function (name or ARN), invoked synchronously.
    Lambda(String),
}

/// One entry of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// How it runs.
    pub runner: ProcessRunner,
    /// What one run covers.
    pub scope: ProcessScope,
    /// How long one run may take.
    pub timeout_secs: u64,
}

/// The configured processes, by id.
pub type Processes = BTreeMap<String, ProcessSpec>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    lambda: Option<String>,
    #[serde(default)]
    scope: ProcessScope,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// Reads the registry; the error names the entry and what is wrong with it.
pub fn parse_processes(json: &str) -> Result<Processes, String> {
    if json.trim().is_empty() {
        return Ok(Processes::new());
    }
    let entries: BTreeMap<String, Value> = serde_json::from_str(json).map_err(|e| format!("not a JSON object of processes: {e}"))?;
    let mut processes = Processes::new();
    for (id, value) in entries {
        if id.trim().is_empty() || id == crate::dispatch::PACK_PROCESS {
            return Err(format!("process id {id:?} is empty or the built-in one's"));
        }
        let entry: Entry = serde_json::from_value(value).map_err(|e| format!("process {id:?}: {e}"))?;
        let runner = match (entry.command, entry.lambda) {
            (Some(command), None) if !command.is_empty() && !command[0].trim().is_empty() => ProcessRunner::Command(command),
            (None, Some(function)) if !function.trim().is_empty() => ProcessRunner::Lambda(function),
            _ => return Err(format!("process {id:?}: give either a non-empty \"command\" array or a \"lambda\" function, not both")),
        };
        let timeout_secs = match entry.timeout_secs {
            None => DEFAULT_TIMEOUT_SECS,
            Some(secs @ 1..=86_400) => secs,
            Some(other) => return Err(format!("process {id:?}: timeoutSecs {other} is not between 1 and 86400")),
        };
        processes.insert(id, ProcessSpec { runner, scope: entry.scope, timeout_secs });
    }
    Ok(processes)
}

/// The file index of output `output` of run `run` (deterministic, so a run done again writes the same
/// items and a delivery after a crash finds what the first one wrote).
pub fn output_index(run: u64, output: usize) -> u64 {
    FIRST_OUTPUT_INDEX + run * OUTPUT_STRIDE + output as u64
}

/// Whether file `index` is an output of a configured processing.
pub fn is_output_index(index: u64) -> bool {
    index >= FIRST_OUTPUT_INDEX
}

/// One input file of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInput {
    /// The feature's providerId.
    pub provider_id: String,
    /// The feature's URN.
    pub urn: String,
    /// The file's name.
    pub filename: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its checksum.
    pub checksum: String,
    /// The checksum's algorithm.
    pub algorithm: String,
    /// Its media type.
    pub mime_type: String,
    /// Where a command reads it (a local file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where a Lambda function reads it (a signed URL, short-lived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What a run is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRequest {
    /// The process id.
    pub process_business_id: String,
    /// The dataset selection's `processDatasetDescription.parameters`, as given.
    pub parameters: Value,
    /// The order.
    pub order_id: String,
    /// The suborder.
    pub suborder: u32,
    /// Which run of the suborder (0 for scope SUBORDER; for scope FEATURE, the index of the feature's
    /// first file in the suborder).
    pub run: u64,
    /// What the run covers.
    pub scope: ProcessScope,
    /// Its files.
    pub inputs: Vec<ProcessInput>,
    /// Where a command writes its outputs (an empty directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<String>,
    /// The bucket a Lambda function writes its outputs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bucket: Option<String>,
    /// The prefix its outputs' keys start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_prefix: Option<String>,
}

/// One output a Lambda function names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessOutput {
    /// Its key in the output bucket (under the output prefix).
    pub key: String,
    /// The name the user gets (the key's last segment when absent).
    #[serde(default)]
    pub filename: Option<String>,
    /// Its media type (guessed from its name when absent).
    #[serde(default)]
    pub mime_type: Option<String>,
}

/// What a Lambda function answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProcessResponse {
    /// Its outputs.
    #[serde(default)]
    pub outputs: Vec<ProcessOutput>,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
}

impl ProcessResponse {
    /// The outputs, checked: each under `prefix`, at most [`MAX_OUTPUTS_PER_RUN`], at least one; or why
    /// the run failed.
    pub fn checked(self, prefix: &str) -> Result<Vec<ProcessOutput>, String> {
        if let Some(error) = self.error.filter(|e| !e.trim().is_empty()) {
            return Err(error);
        }
        if self.outputs.is_empty() {
            return Err("the process produced no file".into());
        }
        if self.outputs.len() > MAX_OUTPUTS_PER_RUN {
            return Err(format!("the process produced {} files, more than {MAX_OUTPUTS_PER_RUN}", self.outputs.len()));
        }
        for o in &self.outputs {
            let rest = o.key.strip_prefix(prefix).unwrap_or_default();
            if rest.is_empty() || rest.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
                return Err(format!("output {:?} is not under {prefix:?}", o.key));
            }
        }
        Ok(self.outputs)
    }
}

/// A media type for a file name, from its extension.
pub fn mime_of(filename: &str) -> &'static str {
    let ext = filename.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "zip" => "application/zip",
        "json" => "application/json",
        "geojson" => "application/geo+json",
        "xml" => "application/xml",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "tif" | "tiff" => "image/tiff",
        "nc" => "application/x-netcdf",
        "h5" | "hdf5" => "application/x-hdf5",
        _ => "application/octet-stream",
    }
}

/// The last lines of a failed command's standard error, at most `max` bytes (a file's cause).
pub fn error_tail(stderr: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_registry_reads_commands_and_lambdas_and_names_what_is_wrong() {
        let p = parse_processes(
            r#"{"ndvi": {"command": ["python3", "ndvi.py"], "scope": "FEATURE", "timeoutSecs": 60},
                "thumbs": {"lambda": "arn:aws:lambda:eu-west-1:1:function:t"}}"#,
        )
        .unwrap();
        assert_eq!(
            p["ndvi"],
            ProcessSpec {
                runner: ProcessRunner::Command(vec!["python3".into(), "ndvi.py".into()]),
                scope: ProcessScope::Feature,
                timeout_secs: 60
            }
        );
        assert_eq!(p["thumbs"].scope, ProcessScope::Suborder);
        assert_eq!(p["thumbs"].timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert!(parse_processes("").unwrap().is_empty());
        for (bad, says) in [
            ("[1]", "not a JSON object"),
            (r#"{"a": {}}"#, "process \"a\": give either"),
            (r#"{"a": {"command": []}}"#, "give either"),
            (r#"{"a": {"command": ["x"], "lambda": "f"}}"#, "not both"),
            (r#"{"a": {"lambda": "f", "scope": "ORDER"}}"#, "process \"a\": unknown variant"),
            (r#"{"a": {"lambda": "f", "timeoutSecs": 0}}"#, "timeoutSecs 0"),
            (r#"{"a": {"lambda": "f", "retries": 3}}"#, "unknown field `retries`"),
            (r#"{"granary-pack": {"lambda": "f"}}"#, "built-in"),
        ] {
            let e = parse_processes(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn outputs_have_their_own_indexes_per_run() {
        assert_eq!(output_index(0, 0), 100_000);
        assert_eq!(output_index(3, 7), 100_307);
        assert!(output_index(MAX_RUNS - 1, MAX_OUTPUTS_PER_RUN - 1) < output_index(MAX_RUNS, 0));
        assert!(is_output_index(output_index(0, 0)) && !is_output_index(99_999) && !is_output_index(4_999));
    }

    #[test]
    fn a_lambda_answer_is_checked_before_its_outputs_are_taken() {
        let ok = |keys: &[&str]| ProcessResponse {
            outputs: keys.iter().map(|k| ProcessOutput { key: (*k).into(), filename: None, mime_type: None }).collect(),
            error: None,
        };
        assert_eq!(ok(&["p/r/a.tif", "p/r/b/c.png"]).checked("p/r/").unwrap().len(), 2);
        assert!(ok(&[]).checked("p/r/").unwrap_err().contains("no file"));
        assert!(ok(&["p/other/a"]).checked("p/r/").unwrap_err().contains("not under"));
        assert!(ok(&["p/r/../x"]).checked("p/r/").unwrap_err().contains("not under"));
        assert!(ok(&["p/r/"]).checked("p/r/").unwrap_err().contains("not under"));
        let many: Vec<String> = (0..=MAX_OUTPUTS_PER_RUN).map(|i| format!("p/r/{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(ok(&many).checked("p/r/").unwrap_err().contains("more than 90"));
        let failed: ProcessResponse = serde_json::from_value(json!({"error": "cloudy"})).unwrap();
        assert_eq!(failed.checked("p/").unwrap_err(), "cloudy");
    }

    #[test]
    fn media_types_and_error_tails() {
        assert_eq!(mime_of("a.TIF"), "image/tiff");
        assert_eq!(mime_of("noext"), "application/octet-stream");
        assert_eq!(error_tail(b"  short\n", 100), "short");
        assert_eq!(error_tail("line1\nline2 é".as_bytes(), 7), "...ine2 é");
    }
}
