//! A scripted OpenAI Batch API (`/v1/files`, `/v1/batches`) for tests and benchmarks: it keeps
//! uploaded files in memory, answers each line of a batch with a chat handler when the batch
//! finishes, and lets a test choose how long a batch runs, which lines fail, and whether the
//! batch completes, expires or is cancelled part way.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::{Handler, Reply, Request};

/// How a batch ends once its polls are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Completed,
    /// Expired after answering only the first `answered` lines.
    Expired {
        answered: usize,
    },
    /// Cancelled after answering only the first `answered` lines.
    Cancelled {
        answered: usize,
    },
}

/// Answers a line's chat body (`Reply::Send` with a status and a body; anything else is a
/// 500 error line).
pub type LineHandler = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// What the next batches do; change it between runs.
#[derive(Clone)]
pub struct Script {
    /// Retrieves answered `in_progress` before a batch finishes (0: finished at the first poll).
    pub polls_before_done: u32,
    pub end: End,
    /// custom_ids whose lines come back in the error file (`{"error": ...}`).
    pub fail: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            polls_before_done: 0,
            end: End::Completed,
            fail: Arc::new(|_| false),
        }
    }
}

struct BatchState {
    object: Value,
    input_file_id: String,
    polls: u32,
    script: Script,
}

/// The scripted Batch API's state, shared with its handler.
pub struct BatchApi {
    answer: LineHandler,
    pub script: Mutex<Script>,
    files: Mutex<HashMap<String, Vec<u8>>>,
    batches: Mutex<BTreeMap<String, BatchState>>,
    next: AtomicU64,
    /// Files uploaded.
    pub uploads: AtomicU64,
    /// Batches created.
    pub created: AtomicU64,
    /// Request lines received in uploaded files, over all uploads.
    pub lines: AtomicU64,
    /// Lines answered (by the line handler), over all batches.
    pub answered: AtomicU64,
    /// custom_ids seen, with how often each was uploaded.
    pub seen: Mutex<HashMap<String, u32>>,
    /// Nanoseconds the server spent handling requests (answering lines included), so a
    /// benchmark can take the server's own work out of a client's time.
    pub busy_ns: AtomicU64,
}

impl BatchApi {
    pub fn new(answer: LineHandler) -> Arc<BatchApi> {
        Arc::new(BatchApi {
            answer,
            script: Mutex::new(Script::default()),
            files: Mutex::default(),
            batches: Mutex::default(),
            next: AtomicU64::new(1),
            uploads: AtomicU64::new(0),
            created: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            seen: Mutex::default(),
            busy_ns: AtomicU64::new(0),
        })
    }

    /// The first uploaded file's lines (to check the request shape).
    pub fn file_lines(&self, file_id: &str) -> Vec<Value> {
        self.files
            .lock()
            .expect("files lock")
            .get(file_id)
            .map(|b| {
                b.split(|c| *c == b'\n')
                    .filter(|l| !l.is_empty())
                    .filter_map(|l| serde_json::from_slice(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The batches' current objects, oldest first.
    pub fn batches(&self) -> Vec<Value> {
        self.batches
            .lock()
            .expect("batches lock")
            .values()
            .map(|b| b.object.clone())
            .collect()
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{:06}", self.next.fetch_add(1, Ordering::SeqCst))
    }

    /// The server's handler (for [`crate::Server::start`]); other paths get 404.
    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |req| {
            let t0 = std::time::Instant::now();
            let reply = me.route(req);
            me.busy_ns
                .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
            reply
        })
    }

    fn route(&self, req: &Request) -> Reply {
        let path = req.path.split('?').next().unwrap_or("");
        let path = path.strip_prefix("/v1").unwrap_or(path);
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method.as_str(), parts.as_slice()) {
            ("POST", ["files"]) => self.upload(req),
            ("GET", ["files", id, "content"]) => {
                match self.files.lock().expect("files lock").get(*id) {
                    Some(b) => Reply::ok(String::from_utf8_lossy(b).to_string()),
                    None => not_found("file"),
                }
            }
            ("POST", ["batches"]) => self.create(req),
            ("GET", ["batches"]) => {
                let data: Vec<Value> = self.batches().into_iter().rev().collect();
                Reply::ok(json!({"object": "list", "data": data, "has_more": false}).to_string())
            }
            ("GET", ["batches", id]) => self.retrieve(id),
            _ => not_found("path"),
        }
    }

    fn upload(&self, req: &Request) -> Reply {
        let Some(content) = multipart_file(req) else {
            return Reply::status(
                400,
                r#"{"error": {"message": "expected a multipart file"}}"#,
            );
        };
        let id = self.id("file");
        let mut n = 0;
        {
            let mut seen = self.seen.lock().expect("seen lock");
            for line in content.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                n += 1;
                if let Some(cid) = serde_json::from_slice::<Value>(line)
                    .ok()
                    .and_then(|v| v["custom_id"].as_str().map(String::from))
                {
                    *seen.entry(cid).or_default() += 1;
                }
            }
        }
        self.lines.fetch_add(n, Ordering::SeqCst);
        self.uploads.fetch_add(1, Ordering::SeqCst);
        let bytes = content.len();
        self.files
            .lock()
            .expect("files lock")
            .insert(id.clone(), content);
        Reply::ok(
            json!({"id": id, "object": "file", "bytes": bytes, "created_at": 0,
                   "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})
            .to_string(),
        )
    }

    fn create(&self, req: &Request) -> Reply {
        let body = req.json().unwrap_or(Value::Null);
        let Some(file) = body["input_file_id"].as_str() else {
            return Reply::status(400, r#"{"error": {"message": "no input_file_id"}}"#);
        };
        let Some(lines) = self
            .files
            .lock()
            .expect("files lock")
            .get(file)
            .map(|b| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count())
        else {
            return not_found("file");
        };
        let id = self.id("batch");
        let object = json!({
            "id": id, "object": "batch", "endpoint": body["endpoint"],
            "input_file_id": file, "completion_window": body["completion_window"],
            "status": "in_progress", "output_file_id": null, "error_file_id": null,
            "created_at": 0, "metadata": body["metadata"],
            "request_counts": {"total": lines, "completed": 0, "failed": 0},
        });
        self.created.fetch_add(1, Ordering::SeqCst);
        self.batches.lock().expect("batches lock").insert(
            id,
            BatchState {
                object: object.clone(),
                input_file_id: file.to_string(),
                polls: 0,
                script: self.script.lock().expect("script lock").clone(),
            },
        );
        Reply::ok(object.to_string())
    }

    fn retrieve(&self, id: &str) -> Reply {
        let mut batches = self.batches.lock().expect("batches lock");
        let Some(b) = batches.get_mut(id) else {
            return not_found("batch");
        };
        if b.object["status"] == "in_progress" {
            if b.polls < b.script.polls_before_done {
                b.polls += 1;
            } else {
                let input = self
                    .files
                    .lock()
                    .expect("files lock")
                    .get(&b.input_file_id)
                    .cloned()
                    .unwrap_or_default();
                self.finish(b, &input);
            }
        }
        Reply::ok(b.object.to_string())
    }

    /// Answers the batch's lines (up to where it ends) into an output and an error file.
    fn finish(&self, b: &mut BatchState, input: &[u8]) {
        let lines: Vec<Value> = input
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let (status, answered) = match b.script.end {
            End::Completed => ("completed", lines.len()),
            End::Expired { answered } => ("expired", answered.min(lines.len())),
            End::Cancelled { answered } => ("cancelled", answered.min(lines.len())),
        };
        let (mut out, mut err) = (String::new(), String::new());
        let (mut done, mut failed) = (0u64, 0u64);
        for (i, line) in lines.iter().take(answered).enumerate() {
            let cid = line["custom_id"].as_str().unwrap_or("");
            if (b.script.fail)(cid) {
                failed += 1;
                err.push_str(
                    &json!({"id": format!("batch_req_{i}"), "custom_id": cid, "response": null,
                            "error": {"code": "server_error", "message": "scripted failure"}})
                    .to_string(),
                );
                err.push('\n');
                continue;
            }
            self.answered.fetch_add(1, Ordering::SeqCst);
            let (status, body) = match (self.answer)(&line["body"]) {
                Reply::Send { status, body, .. } => (status, body),
                _ => (500, r#"{"error": {"message": "no answer"}}"#.to_string()),
            };
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            let row = json!({"id": format!("batch_req_{i}"), "custom_id": cid,
                             "response": {"status_code": status, "request_id": format!("req_{i}"), "body": body},
                             "error": null});
            if status == 200 {
                done += 1;
                out.push_str(&row.to_string());
                out.push('\n');
            } else {
                failed += 1;
                err.push_str(&row.to_string());
                err.push('\n');
            }
        }
        let mut files = self.files.lock().expect("files lock");
        let mut put = |text: String| {
            if text.is_empty() {
                return Value::Null;
            }
            let id = self.id("file");
            files.insert(id.clone(), text.into_bytes());
            Value::String(id)
        };
        b.object["output_file_id"] = put(out);
        b.object["error_file_id"] = put(err);
        b.object["status"] = json!(status);
        b.object["request_counts"] =
            json!({"total": lines.len(), "completed": done, "failed": failed});
    }
}

fn not_found(what: &str) -> Reply {
    Reply::status(
        404,
        &json!({"error": {"message": format!("no such {what}"), "type": "invalid_request_error"}})
            .to_string(),
    )
}

/// The bytes of a multipart request's `file` part.
fn multipart_file(req: &Request) -> Option<Vec<u8>> {
    let ct = req.header("content-type")?;
    let boundary = ct.split("boundary=").nth(1)?.trim_matches('"');
    let delim = format!("--{boundary}");
    let body = &req.body;
    let mut at = 0;
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    while let Some(start) = find(body, delim.as_bytes(), at) {
        let head_start = start + delim.len() + 2;
        let head_end = find(body, b"\r\n\r\n", head_start)?;
        let head = String::from_utf8_lossy(&body[head_start..head_end]).to_string();
        let content_start = head_end + 4;
        let next = find(body, delim.as_bytes(), content_start)?;
        if head.contains("name=\"file\"") {
            // The part ends with CRLF before the next delimiter.
            return Some(body[content_start..next.saturating_sub(2)].to_vec());
        }
        at = next;
    }
    None
}
