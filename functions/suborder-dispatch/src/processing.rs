//! Configured processings (`GRANARY_PROCESSES`): a command run on the machine, or a Lambda function
//! invoked synchronously, over a suborder's available files, whole or feature by feature; its outputs,
//! kept in the staging bucket under `processed/<order>/<suborder>/<run>/`, replace the run's inputs as
//! the order's files. The contract the process sees is `granary_domain::processing`.
//!
//! Runs are numbered by their first input's index, so a delivery after a crash finds the runs done
//! (their inputs are gone), the runs whose outputs were written but whose inputs were not yet removed
//! (their first output item is there: the process is not run again), and runs again only those that
//! wrote nothing. A process that fails (non-zero exit, timeout, a Lambda error, an answer that breaks
//! the contract) puts its inputs in ERROR with its reason; a transient failure (throttling, the
//! network) leaves the message to SQS's redelivery.

use crate::{OUTPUT_INDEX, SuborderDispatch, product_file};
use granary_domain::catalog::ProductFile;
use granary_domain::dispatch::{PROCESSED_STORAGE, Source, source_of};
use granary_domain::metalink::safe_path;
use granary_domain::order::FileState;
use granary_domain::processing::{
    MAX_OUTPUTS_PER_RUN, ProcessInput, ProcessRequest, ProcessResponse, ProcessRunner, ProcessScope, ProcessSpec, error_tail,
    is_output_index, mime_of, output_index,
};
use granary_ports::{BlobReader, Item, Key, PortError, StorageClass};
use granary_stores::StoreError;
use granary_stores::orders::{file_sk, order_partition};
use md5::{Digest, Md5};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How the cause of a file whose processing failed starts.
const FAILED_PREFIX: &str = "processing ";

/// How much of a command's standard error is kept (its end makes the cause).
const STDERR_KEPT: usize = 64 * 1024;

/// The cause of a file a processing run failed on.
fn failed_cause(file: &Item) -> Option<&str> {
    file.get_str("cause").filter(|c| file.get_str("state") == Some(FileState::Error.as_str()) && c.starts_with(FAILED_PREFIX))
}

/// What a run came to.
enum Outcome {
    /// Its outputs, stored in the staging bucket.
    Produced(Vec<Produced>),
    /// Why it failed (its inputs' cause).
    Failed(String),
}

/// One output of a run, stored.
struct Produced {
    filename: String,
    mime_type: String,
    key: String,
    size: u64,
    md5: String,
}

/// Why a run stopped before it came to an outcome (SQS redelivers the message).
fn interrupted(what: impl std::fmt::Display) -> StoreError {
    StoreError::Port(PortError::Unavailable(what.to_string()))
}

/// A file item's index in its suborder (`F#<suborder>#<index>`).
fn index_of(file: &Item) -> u64 {
    file.key.sk.rsplit('#').next().and_then(|i| i.parse().ok()).unwrap_or(0)
}

impl SuborderDispatch {
    /// Runs configured process `process` (`spec`) over suborder `number`'s available files, then ends
    /// its processing.
    pub(crate) async fn run_configured(
        &self,
        order_id: &str,
        number: u32,
        suborder: &Item,
        process: &str,
        spec: &ProcessSpec,
    ) -> Result<(), StoreError> {
        let files = self.orders.suborder_files(&self.backend, order_id, number).await?;
        // Only stored files are processed: referenced files and an external service's stay as they
        // are. Files a run already failed on stay with their run, so that a delivery after a crash in
        // the middle of marking them fails the rest the same way rather than running it again.
        let inputs: Vec<Item> = files
            .into_iter()
            .filter(|f| {
                let index = index_of(f);
                let state = f.get_str("state").unwrap_or_default();
                (matches!(state, "AVAILABLE" | "DOWNLOADED") || failed_cause(f).is_some())
                    && !is_output_index(index)
                    && index != OUTPUT_INDEX
                    && self.object_of(f).is_some()
            })
            .collect();
        // Runs by their first input's index: the whole suborder, or each feature.
        let mut runs: BTreeMap<u64, Vec<Item>> = BTreeMap::new();
        match spec.scope {
            ProcessScope::Suborder => {
                if !inputs.is_empty() {
                    runs.insert(0, inputs);
                }
            }
            ProcessScope::Feature => {
                let mut by_feature: BTreeMap<String, Vec<Item>> = BTreeMap::new();
                for f in inputs {
                    by_feature.entry(f.get_str("urn").unwrap_or_default().to_owned()).or_default().push(f);
                }
                for group in by_feature.into_values() {
                    let first = group.iter().map(index_of).min().unwrap_or(0);
                    runs.insert(first, group);
                }
            }
        }
        let parameters = suborder.get("processParameters").cloned().unwrap_or(Value::Null);
        for (run, inputs) in runs {
            if let Some(cause) = inputs.iter().find_map(failed_cause) {
                // This run failed before a crash: the rest of its files fail with it.
                let cause = cause.to_owned();
                self.fulfilment.processing_failed(&self.backend, order_id, number, &inputs, &cause).await?;
                continue;
            }
            let first_output = file_sk(number, output_index(run, 0));
            let written = self.backend.table.get(&self.config.orders_table, &Key::new(order_partition(order_id), first_output)).await?;
            if written.is_some() {
                // Its outputs are in: only its inputs are left to remove.
                self.fulfilment.replace(&self.backend, order_id, number, vec![], &inputs).await?;
                continue;
            }
            let request = ProcessRequest {
                process_business_id: process.to_owned(),
                parameters: parameters.clone(),
                order_id: order_id.to_owned(),
                suborder: number,
                run,
                scope: spec.scope,
                inputs: vec![],
                output_dir: None,
                output_bucket: None,
                output_prefix: None,
            };
            let outcome = match &spec.runner {
                ProcessRunner::Command(command) => self.run_command(command, spec.timeout_secs, request, &inputs).await?,
                ProcessRunner::Lambda(function) => self.run_lambda(function, spec.timeout_secs, request, &inputs).await?,
            };
            match outcome {
                Outcome::Produced(produced) => {
                    let now = self.backend.clock.now_ms();
                    let provider_id = match spec.scope {
                        ProcessScope::Feature => inputs[0].get_str("providerId").unwrap_or_default().to_owned(),
                        ProcessScope::Suborder => format!("suborder-{number}"),
                    };
                    let urn = match spec.scope {
                        ProcessScope::Feature => inputs[0].get_str("urn").unwrap_or_default().to_owned(),
                        ProcessScope::Suborder => String::new(),
                    };
                    let outputs = produced
                        .into_iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let file = ProductFile {
                                data_type: "RAWDATA".into(),
                                filename: p.filename,
                                mime_type: p.mime_type,
                                size: p.size,
                                checksum: p.md5,
                                algorithm: "MD5".into(),
                                online: true,
                                reference: false,
                                storage: Some(PROCESSED_STORAGE.into()),
                                url: format!("s3://{}/{}", self.config.staging_bucket, p.key),
                            };
                            Item::new(Key::new(order_partition(order_id), file_sk(number, output_index(run, i))))
                                .with("state", FileState::Available.as_str())
                                .with("suborder", number)
                                .with("urn", urn.clone())
                                .with("providerId", provider_id.clone())
                                .with("processedBy", process)
                                .with("processedFrom", inputs.len())
                                .with("availableAt", now)
                                .with("file", serde_json::to_value(&file).unwrap_or_default())
                        })
                        .collect();
                    self.fulfilment.replace(&self.backend, order_id, number, outputs, &inputs).await?;
                    tracing::info!(order_id, number, run, process, inputs = inputs.len(), "processing run done");
                }
                Outcome::Failed(cause) => {
                    let cause = format!("{FAILED_PREFIX}{process} failed: {cause}");
                    tracing::warn!(order_id, number, run, cause, "processing run failed: its files are in error");
                    self.fulfilment.processing_failed(&self.backend, order_id, number, &inputs, &cause).await?;
                }
            }
        }
        let events = self.fulfilment.processed(&self.backend, order_id, number).await?;
        self.flush(&events).await;
        Ok(())
    }

    /// Where `file`'s object is: a stored file's bucket and key.
    fn object_of(&self, file: &Item) -> Option<(ProductFile, String, String)> {
        let pf = product_file(file)?;
        match source_of(&pf, &self.locations) {
            Source::Online { bucket, key } | Source::Nearline { bucket, key } => Some((pf, bucket, key)),
            _ => None,
        }
    }

    fn input_of(file: &Item, pf: &ProductFile) -> ProcessInput {
        ProcessInput {
            provider_id: file.get_str("providerId").unwrap_or_default().to_owned(),
            urn: file.get_str("urn").unwrap_or_default().to_owned(),
            filename: pf.filename.clone(),
            size: pf.size,
            checksum: pf.checksum.clone(),
            algorithm: pf.algorithm.clone(),
            mime_type: pf.mime_type.clone(),
            path: None,
            url: None,
        }
    }

    /// Runs `command` in a fresh work directory: inputs copied into `in/`, the request on its standard
    /// input, outputs read from `out/` (regular files, by name) and stored.
    async fn run_command(
        &self,
        command: &[String],
        timeout_secs: u64,
        mut request: ProcessRequest,
        inputs: &[Item],
    ) -> Result<Outcome, StoreError> {
        let work = tempfile::tempdir().map_err(|e| interrupted(format!("a work directory for the processing: {e}")))?;
        let (dir_in, dir_out) = (work.path().join("in"), work.path().join("out"));
        for dir in [&dir_in, &dir_out] {
            tokio::fs::create_dir_all(dir).await.map_err(|e| interrupted(format!("creating {}: {e}", dir.display())))?;
        }
        for (i, file) in inputs.iter().enumerate() {
            let Some((pf, bucket, key)) = self.object_of(file) else { continue };
            // One directory per input: two features may hold files of the same name.
            let path = dir_in.join(i.to_string()).join(safe_path(&[&pf.filename]));
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| interrupted(format!("creating {}: {e}", parent.display())))?;
            }
            let (_, mut reader) = self.backend.blobs.get(&bucket, &key).await?;
            let mut out = tokio::fs::File::create(&path).await.map_err(|e| interrupted(format!("writing {}: {e}", path.display())))?;
            tokio::io::copy(&mut reader, &mut out).await.map_err(|e| interrupted(format!("copying {bucket}/{key}: {e}")))?;
            out.flush().await.map_err(|e| interrupted(format!("writing {}: {e}", path.display())))?;
            let mut input = Self::input_of(file, &pf);
            input.path = Some(path.display().to_string());
            request.inputs.push(input);
        }
        request.output_dir = Some(dir_out.display().to_string());
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let mut child = match tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .current_dir(work.path())
            // The process gets no credentials of Granary's, only a path to find its tools.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("HOME", work.path())
            // Its own process group: a timeout stops whatever it started too.
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return Ok(Outcome::Failed(format!("{} could not be started: {e}", command[0]))),
        };
        let (stdin, stderr) = (child.stdin.take(), child.stderr.take());
        let feeding = async move {
            if let Some(mut stdin) = stdin {
                // A command that does not read its request is its own business.
                let _ = stdin.write_all(&body).await;
            }
        };
        let reading = async move {
            let mut kept = Vec::new();
            if let Some(mut stderr) = stderr {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stderr, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                    kept.extend_from_slice(&buf[..n]);
                    // Its end makes the cause: keep the last STDERR_KEPT bytes.
                    if kept.len() > 2 * STDERR_KEPT {
                        kept.drain(..kept.len() - STDERR_KEPT);
                    }
                }
            }
            kept
        };
        let group = child.id();
        let finished =
            tokio::time::timeout(Duration::from_secs(timeout_secs), async { tokio::join!(feeding, reading, child.wait()) }).await;
        let (stderr, status) = match finished {
            Err(_) => {
                if let Some(group) = group {
                    // The whole group: a shell's or an interpreter's children too.
                    let _ = tokio::process::Command::new("kill").args(["-s", "KILL", "--", &format!("-{group}")]).status().await;
                }
                return Ok(Outcome::Failed(format!("it took longer than {timeout_secs} s")));
            }
            Ok(((), stderr, Err(e))) => {
                return Ok(Outcome::Failed(format!("waiting for {}: {e} {}", command[0], error_tail(&stderr, 200))));
            }
            Ok(((), stderr, Ok(status))) => (stderr, status),
        };
        if !status.success() {
            return Ok(Outcome::Failed(format!("{} ({status})", error_tail(&stderr, 400))));
        }
        let mut names = Vec::new();
        let mut entries = tokio::fs::read_dir(&dir_out).await.map_err(|e| interrupted(format!("reading {}: {e}", dir_out.display())))?;
        while let Some(entry) = entries.next_entry().await.map_err(|e| interrupted(format!("reading {}: {e}", dir_out.display())))? {
            if entry.file_type().await.map(|t| t.is_file()).unwrap_or(false) {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    return Ok(Outcome::Failed(format!("output {:?} is not named in UTF-8", entry.file_name())));
                };
                names.push(name);
            }
        }
        names.sort();
        if names.is_empty() {
            return Ok(Outcome::Failed("the process produced no file".into()));
        }
        if names.len() > MAX_OUTPUTS_PER_RUN {
            return Ok(Outcome::Failed(format!("the process produced {} files, more than {MAX_OUTPUTS_PER_RUN}", names.len())));
        }
        let safe: std::collections::BTreeSet<String> = names.iter().map(|n| safe_path(&[n])).collect();
        if safe.len() != names.len() {
            return Ok(Outcome::Failed(
                "two outputs have the same name once made safe (':', '\\' and control characters become '_')".into(),
            ));
        }
        let prefix = output_prefix(&request);
        let mut produced = Vec::new();
        for name in names {
            let path: PathBuf = dir_out.join(&name);
            let filename = safe_path(&[&name]);
            let key = format!("{prefix}{filename}");
            let md5 = md5_of_file(&path).await.map_err(|e| interrupted(format!("reading {}: {e}", path.display())))?;
            let body: BlobReader =
                Box::pin(tokio::fs::File::open(&path).await.map_err(|e| interrupted(format!("reading {}: {e}", path.display())))?);
            let meta = self.backend.blobs.put(&self.config.staging_bucket, &key, body, StorageClass::Online).await?;
            produced.push(Produced { mime_type: mime_of(&filename).to_owned(), filename, key, size: meta.size, md5 });
        }
        Ok(Outcome::Produced(produced))
    }

    /// Invokes `function` with the inputs as signed URLs; it writes its outputs under the run's prefix of
    /// the staging bucket and names them in its answer.
    async fn run_lambda(
        &self,
        function: &str,
        timeout_secs: u64,
        mut request: ProcessRequest,
        inputs: &[Item],
    ) -> Result<Outcome, StoreError> {
        // The URLs outlive the run, at most 12 hours (a role's session lasts no longer).
        let lives = Duration::from_secs((timeout_secs + 600).min(12 * 3600));
        for file in inputs {
            let Some((pf, bucket, key)) = self.object_of(file) else { continue };
            let mut input = Self::input_of(file, &pf);
            input.url = Some(self.backend.blobs.signed_get_url(&bucket, &key, lives).await?);
            request.inputs.push(input);
        }
        let prefix = output_prefix(&request);
        request.output_bucket = Some(self.config.staging_bucket.clone());
        request.output_prefix = Some(prefix.clone());
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let answer = match tokio::time::timeout(Duration::from_secs(timeout_secs), self.functions.invoke(function, &body)).await {
            Err(_) => return Ok(Outcome::Failed(format!("it took longer than {timeout_secs} s"))),
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) if e.is_transient() => return Err(e.into()),
            Ok(Err(e)) => return Ok(Outcome::Failed(e.to_string())),
        };
        let outputs = match serde_json::from_slice::<ProcessResponse>(&answer) {
            Ok(response) => match response.checked(&prefix) {
                Ok(outputs) => outputs,
                Err(why) => return Ok(Outcome::Failed(why)),
            },
            Err(e) => return Ok(Outcome::Failed(format!("its answer is not {{\"outputs\": [{{\"key\"}}]}}: {e}"))),
        };
        let mut produced = Vec::new();
        for o in outputs {
            let Some(meta) = self.backend.blobs.head(&self.config.staging_bucket, &o.key).await? else {
                return Ok(Outcome::Failed(format!("output {} was named but not written", o.key)));
            };
            let (_, mut reader) = self.backend.blobs.get(&self.config.staging_bucket, &o.key).await?;
            let md5 = md5_of(&mut reader).await.map_err(|e| interrupted(format!("reading {}: {e}", o.key)))?;
            let filename = safe_path(&[o.filename.as_deref().unwrap_or_else(|| o.key.rsplit('/').next().unwrap_or_default())]);
            let mime_type = o.mime_type.unwrap_or_else(|| mime_of(&filename).to_owned());
            produced.push(Produced { filename, mime_type, key: o.key, size: meta.size, md5 });
        }
        Ok(Outcome::Produced(produced))
    }
}

/// The staging prefix of one attempt at a run: two deliveries running at once write apart, and the
/// items written first name their own objects (the others expire by the bucket's rule).
fn output_prefix(request: &ProcessRequest) -> String {
    format!("processed/{}/{}/{}/{}/", request.order_id, request.suborder, request.run, uuid::Uuid::new_v4().simple())
}

async fn md5_of(reader: &mut BlobReader) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(hex::encode(md5.finalize()));
        }
        md5.update(&buf[..n]);
    }
}

async fn md5_of_file(path: &Path) -> std::io::Result<String> {
    let mut file: BlobReader = Box::pin(tokio::fs::File::open(path).await?);
    md5_of(&mut file).await
}
