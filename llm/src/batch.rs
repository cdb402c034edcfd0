//! Batch judging: with an endpoint's `batch: true`, the chat requests a node could not answer
//! from the LLM memo go out as one OpenAI Batch API job (a JSONL file uploaded to `/files`, a
//! batch created at `/batches`), and the node ends `pending`; a later run polls the batch,
//! stores every answer in the memo under the request's own key (the line's `custom_id`), and
//! the node then finds its answers there as if it had asked them one by one.
//!
//! What is open lives in the memo too (`{"batch_index": endpoint}`: one record per uploaded
//! file), written before the batch is created, so a run killed at any point neither loses a
//! batch nor submits its requests twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::traits::RequestOptionsBuilder;
use async_openai::types::files::{CreateFileRequest, FileInput, FilePurpose};
use async_openai::types::InputSource;
use relabel_engine::cache::Memo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::CallError;

/// The path every line of a batch asks (and the batch's `endpoint`).
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// The HTTP clients of the batch calls (`http` retries, `once` does not: creating a batch),
/// and the client whose error handling (classification, key redaction) they share.
pub struct Api<'a> {
    pub http: async_openai::Client<OpenAIConfig>,
    pub once: async_openai::Client<OpenAIConfig>,
    pub client: &'a crate::client::Client,
}

/// One uploaded file of requests, and the batch made from it once it exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    file_id: String,
    /// None between the upload and the batch's creation (or a kill in between).
    batch_id: Option<String>,
    requests: usize,
    submitted: String,
}

/// A batch still running, for the pending message.
#[derive(Debug, Clone)]
pub struct Open {
    pub batch_id: String,
    pub status: String,
    pub requests: usize,
    pub done: u64,
}

/// What polling the open batches found, fixed for the rest of the run.
#[derive(Debug, Default)]
struct Polled {
    /// Requests in batches still running: not asked again.
    in_flight: HashSet<String>,
    /// Requests a finished batch did not answer (an error line, or expired or cancelled
    /// before their turn): this run they fail; a later run may ask them again.
    failed: HashMap<String, String>,
    open: Vec<Open>,
}

/// Counts for the node's metrics (`batch`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct BatchCounts {
    /// Requests sent in batches this run.
    pub submitted: usize,
    /// Answers collected from finished batches this run (stored in the memo).
    pub collected: usize,
    /// Requests a finished batch did not answer.
    pub failed: usize,
    /// Requests still in running batches.
    pub in_flight: usize,
    /// Batches created or polled this run.
    pub batches: Vec<String>,
    /// Tokens of the collected answers (priced at the batch discount).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The batch side of one client: what the open batches hold, and the requests queued for
/// the next batch.
pub struct Batcher {
    index_key: Value,
    window: String,
    polled: tokio::sync::OnceCell<Polled>,
    queue: Mutex<BTreeMap<String, Value>>,
    counts: Mutex<BatchCounts>,
    /// Where the batch's input JSONL is also written (for `vllm run-batch` or inspection).
    work_dir: Option<std::path::PathBuf>,
}

/// One process edits the index at a time (nodes of one run may share an endpoint; runs on one
/// cache never overlap: the cache's lock sees to that).
static INDEX_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Batcher {
    pub fn new(identity: &Value, window: &str, work_dir: Option<std::path::PathBuf>) -> Batcher {
        Batcher {
            index_key: json!({ "batch_index": identity }),
            window: window.to_string(),
            polled: tokio::sync::OnceCell::new(),
            queue: Mutex::new(BTreeMap::new()),
            counts: Mutex::default(),
            work_dir,
        }
    }

    pub fn counts(&self) -> BatchCounts {
        self.counts.lock().expect("counts lock").clone()
    }

    fn records(&self, memo: &Memo) -> Vec<Record> {
        memo.get(&self.index_key)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value(v["open"].clone()).ok())
            .unwrap_or_default()
    }

    fn save(&self, memo: &Memo, records: &[Record]) -> Result<(), CallError> {
        memo.put(&self.index_key, &json!({ "open": records }))
            .map_err(|e| CallError::CacheWrite(format!("the batch index: {e}")))
    }

    /// Polls every open batch once per run (before the first request looks in the memo):
    /// a finished one's answers go into the memo, its record is dropped; a running one's
    /// requests are in flight.
    pub async fn poll_once(&self, api: &Api<'_>, memo: &Memo) -> Result<(), CallError> {
        self.polled
            .get_or_try_init(|| self.poll(api, memo))
            .await
            .map(|_| ())
    }

    async fn poll(&self, api: &Api<'_>, memo: &Memo) -> Result<Polled, CallError> {
        let _guard = INDEX_LOCK.lock().await;
        let mut polled = Polled::default();
        let mut keep = Vec::new();
        for mut rec in self.records(memo) {
            let ids: Vec<String> = memo
                .get(&json!({ "batch_requests": rec.file_id }))
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            let batch = match &rec.batch_id {
                Some(id) => retrieve(api, id).await,
                None => adopt(api, &rec.file_id, &self.window).await,
            };
            let batch = match batch {
                Ok(Some(b)) => b,
                // The server no longer knows it: its requests are asked again.
                Ok(None) => {
                    tracing::warn!(file = %rec.file_id, "a batch the cache recorded is unknown to the server; its requests will be asked again");
                    continue;
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    // Cannot tell now: keep it, and do not ask its requests twice.
                    tracing::warn!(file = %rec.file_id, "polling a batch: {e}");
                    polled.in_flight.extend(ids);
                    keep.push(rec);
                    continue;
                }
            };
            let id = batch["id"].as_str().unwrap_or_default().to_string();
            if rec.batch_id.is_none() {
                rec.batch_id = Some(id.clone());
            }
            self.counts
                .lock()
                .expect("counts lock")
                .batches
                .push(id.clone());
            let status = batch["status"].as_str().unwrap_or("").to_string();
            if !matches!(
                status.as_str(),
                "completed" | "expired" | "cancelled" | "failed"
            ) {
                polled.open.push(Open {
                    batch_id: id,
                    status,
                    requests: rec.requests,
                    done: batch
                        .pointer("/request_counts/completed")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                });
                polled.in_flight.extend(ids);
                keep.push(rec);
                continue;
            }
            match collect(api, &batch, memo).await {
                Ok((answered, errors, tokens)) => {
                    let mut c = self.counts.lock().expect("counts lock");
                    c.collected += answered.len();
                    c.prompt_tokens += tokens.0;
                    c.completion_tokens += tokens.1;
                    for cid in ids {
                        if answered.contains(&cid) {
                            continue;
                        }
                        let why = errors.get(&cid).cloned().unwrap_or_else(|| {
                            format!("batch {id} ended {status} before answering it")
                        });
                        c.failed += 1;
                        polled.failed.insert(cid, why);
                    }
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    tracing::warn!(batch = %id, "collecting a finished batch: {e}; trying again next run");
                    polled.in_flight.extend(ids);
                    keep.push(rec);
                }
            }
        }
        self.save(memo, &keep)?;
        self.counts.lock().expect("counts lock").in_flight = polled.in_flight.len();
        Ok(polled)
    }

    /// A request the memo cannot answer: failed this run (a finished batch did not answer
    /// it), in flight, or queued for the batch this run submits. Always an error: the answer
    /// is not here yet.
    pub fn defer(&self, custom_id: String, body: Value) -> CallError {
        if let Some(p) = self.polled.get() {
            if let Some(why) = p.failed.get(&custom_id) {
                return CallError::GaveUp {
                    kind: "batch_failed",
                    detail: why.clone(),
                };
            }
            if p.in_flight.contains(&custom_id) {
                return CallError::Pending;
            }
        }
        self.queue
            .lock()
            .expect("queue lock")
            .insert(custom_id, body);
        CallError::Pending
    }

    /// Ends the node's asking: submits what was queued as one batch (recorded before it is
    /// created) and says what the node waits for; None when nothing is queued or in flight.
    pub async fn submit(&self, api: &Api<'_>, memo: &Memo) -> Result<Option<String>, CallError> {
        let queued = std::mem::take(&mut *self.queue.lock().expect("queue lock"));
        let mut waits: Vec<String> = self
            .polled
            .get()
            .map(|p| {
                p.open
                    .iter()
                    .map(|o| {
                        format!(
                            "batch {} {} ({} of {} requests done)",
                            o.batch_id, o.status, o.done, o.requests
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !queued.is_empty() {
            let mut jsonl = Vec::new();
            for (cid, body) in &queued {
                let line =
                    json!({"custom_id": cid, "method": "POST", "url": CHAT_PATH, "body": body});
                jsonl.extend_from_slice(line.to_string().as_bytes());
                jsonl.push(b'\n');
            }
            let kept = self.work_dir.as_ref().and_then(|dir| {
                let p = dir.join("batch-input.jsonl");
                std::fs::write(&p, &jsonl).ok().map(|_| p)
            });
            let file = CreateFileRequest {
                file: FileInput {
                    source: InputSource::VecU8 {
                        filename: "relabel-batch.jsonl".into(),
                        vec: jsonl,
                    },
                },
                purpose: FilePurpose::Batch,
                expires_after: None,
            };
            let uploaded: Value = api
                .http
                .files()
                .create_byot(file)
                .await
                .map_err(|e| plain(api, e, "uploading the batch file"))?;
            let file_id = uploaded["id"]
                .as_str()
                .ok_or_else(|| CallError::BadResponse(format!("upload: no file id in {uploaded}")))?
                .to_string();
            let ids: Vec<&String> = queued.keys().collect();
            let _guard = INDEX_LOCK.lock().await;
            memo.put(&json!({ "batch_requests": file_id }), &json!(ids))
                .map_err(|e| CallError::CacheWrite(e.to_string()))?;
            let mut records = self.records(memo);
            records.push(Record {
                file_id: file_id.clone(),
                batch_id: None,
                requests: queued.len(),
                submitted: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
            });
            // Durable before the batch exists: a kill from here on finds the record.
            self.save(memo, &records)?;
            let batch = match create(api, &file_id, &self.window).await {
                Ok(b) => b,
                Err(e) if e.is_fatal() => return Err(e),
                // It may exist all the same: the next run looks for it before making one.
                Err(e) => {
                    waits.insert(0, format!("creating the batch for {} requests did not answer ({e}); the next run looks for it by its file {file_id} and creates it only if it is not there", queued.len()));
                    self.counts.lock().expect("counts lock").submitted += queued.len();
                    return Ok(Some(format!(
                        "waiting on the Batch API: {}; run again to collect",
                        waits.join("; ")
                    )));
                }
            };
            let id = batch["id"].as_str().unwrap_or_default().to_string();
            if let Some(r) = records.iter_mut().find(|r| r.file_id == file_id) {
                r.batch_id = Some(id.clone());
            }
            self.save(memo, &records)?;
            let mut c = self.counts.lock().expect("counts lock");
            c.submitted += queued.len();
            c.batches.push(id.clone());
            waits.insert(
                0,
                format!(
                    "batch {id} submitted ({} requests{})",
                    queued.len(),
                    kept.map(|p| format!(", as in {}", p.display()))
                        .unwrap_or_default()
                ),
            );
        }
        Ok((!waits.is_empty()).then(|| {
            format!(
                "waiting on the Batch API: {}; run again to collect",
                waits.join("; ")
            )
        }))
    }
}

/// An error of a batch call as the client classifies any call's error (the key redacted),
/// saying what was being done (404 is handled by the callers).
fn plain(api: &Api<'_>, e: OpenAIError, doing: &str) -> CallError {
    let at = |s: String| format!("{doing}: {s}");
    match api.client.classify(e) {
        CallError::Unreachable(s) => CallError::Unreachable(at(s)),
        CallError::Auth(s) => CallError::Auth(at(s)),
        CallError::Rejected(s) => CallError::Rejected(at(s)),
        CallError::BadResponse(s) => CallError::BadResponse(at(s)),
        CallError::CacheWrite(s) => CallError::CacheWrite(at(s)),
        CallError::GaveUp { kind, detail } => CallError::GaveUp {
            kind,
            detail: at(detail),
        },
        other => other,
    }
}

fn is_not_found(e: &OpenAIError) -> bool {
    matches!(e, OpenAIError::ApiError(api) if api.status_code.as_u16() == 404)
}

async fn retrieve(api: &Api<'_>, id: &str) -> Result<Option<Value>, CallError> {
    match api.http.batches().retrieve_byot::<&str, Value>(id).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(plain(api, e, "polling the batch")),
    }
}

async fn create(api: &Api<'_>, file_id: &str, window: &str) -> Result<Value, CallError> {
    let b: Value = api
        .once
        .batches()
        .create_byot(json!({
            "input_file_id": file_id,
            "endpoint": CHAT_PATH,
            "completion_window": window,
            "metadata": {"created_by": "relabel"},
        }))
        .await
        .map_err(|e| plain(api, e, "creating the batch"))?;
    if b["id"].as_str().is_none() {
        return Err(CallError::BadResponse(format!(
            "create batch: no id in {b}"
        )));
    }
    Ok(b)
}

/// A record whose batch id was never stored (killed between upload and the id's write): the
/// batch made from its file if the server has one, else one created now from the same file.
async fn adopt(api: &Api<'_>, file_id: &str, window: &str) -> Result<Option<Value>, CallError> {
    let mut after: Option<String> = None;
    for _ in 0..50 {
        let mut q = vec![("limit", "100".to_string())];
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        let page: Value = api
            .http
            .batches()
            .query(&q)
            .map_err(|e| plain(api, e, "listing batches"))?
            .list_byot()
            .await
            .map_err(|e| plain(api, e, "listing batches"))?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        if let Some(b) = data.iter().find(|b| b["input_file_id"] == file_id) {
            // Its state as of now (a listing may lag).
            return match b["id"].as_str() {
                Some(id) => retrieve(api, id).await,
                None => Ok(Some(b.clone())),
            };
        }
        match (page["has_more"].as_bool(), data.last()) {
            (Some(true), Some(last)) => after = last["id"].as_str().map(String::from),
            _ => break,
        }
    }
    create(api, file_id, window).await.map(Some)
}

/// Downloads a finished batch's output and error files and stores every answer in the memo:
/// the ids answered, why the others failed, and the answers' tokens.
async fn collect(
    api: &Api<'_>,
    batch: &Value,
    memo: &Memo,
) -> Result<(HashSet<String>, HashMap<String, String>, (u64, u64)), CallError> {
    let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let id = batch["id"].as_str().unwrap_or_default();
    let mut answered = HashSet::new();
    let mut errors = HashMap::new();
    let mut store = Vec::new();
    let mut tokens = (0u64, 0u64);
    for field in ["output_file_id", "error_file_id"] {
        let Some(file) = batch[field].as_str().filter(|f| !f.is_empty()) else {
            continue;
        };
        let bytes = api
            .http
            .files()
            .content(file)
            .await
            .map_err(|e| plain(api, e, "downloading the batch's results"))?;
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                tracing::warn!(batch = %id, line = n + 1, "a results line is not JSON; skipped");
                continue;
            };
            let Some(cid) = v["custom_id"].as_str() else {
                continue;
            };
            let status = v.pointer("/response/status_code").and_then(Value::as_u64);
            let body = v.pointer("/response/body");
            match (status, body) {
                (Some(200), Some(body)) if body.pointer("/choices/0/message").is_some() => {
                    let u = |k: &str| {
                        body.pointer(&format!("/usage/{k}"))
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                    };
                    tokens.0 = tokens.0.saturating_add(u("prompt_tokens"));
                    tokens.1 = tokens.1.saturating_add(u("completion_tokens"));
                    store.push((
                        cid.to_string(),
                        json!({"response": body, "at": at, "batch": id}),
                    ));
                    answered.insert(cid.to_string());
                }
                _ => {
                    let why = v
                        .pointer("/error/message")
                        .or_else(|| v.pointer("/response/body/error/message"))
                        .and_then(Value::as_str)
                        .unwrap_or("no answer");
                    errors.insert(
                        cid.to_string(),
                        format!(
                            "batch {id}: {}{why}",
                            status.map(|s| format!("{s} ")).unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }
    // Durable before the record is dropped: a kill now only collects them again.
    memo.put_many_hashed(&store)
        .map_err(|e| CallError::CacheWrite(e.to_string()))?;
    Ok((answered, errors, tokens))
}
