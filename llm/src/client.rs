//! The LLM client: async-openai over HTTP with bounded concurrency, a request rate limit,
//! retries (429 honouring Retry-After, 5xx, timeouts, refused connections), a token budget,
//! the engine's request cache in front, and counters for every kind of failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use relabel_engine::cache::Memo;
use serde_json::{json, Value};
use tokio::sync::{Mutex, Semaphore};

use crate::endpoint::{Endpoint, Provider};
use crate::local::LocalServer;

/// Counters of what happened on the wire and in the answers; reported as node metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// HTTP requests sent (every attempt, retries included).
    pub http_requests: AtomicU64,
    pub cache_hits: AtomicU64,
    pub rate_limited: AtomicU64,
    pub server_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub connect_errors: AtomicU64,
    /// A connection reset, or closed before a complete response (retried like timeouts).
    pub transport_errors: AtomicU64,
    /// A 200 whose body is not a chat completion.
    pub bad_responses: AtomicU64,
    /// Responses that arrived but could not be stored in the cache (so they were not used).
    pub cache_write_errors: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

impl Stats {
    /// Adds `n`, saturating: a server's huge `usage` cannot wrap a counter (and so a budget).
    fn add(c: &AtomicU64, n: u64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_add(n))
        });
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Why a request produced no usable response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Nothing listens at the endpoint (after retries).
    Unreachable(String),
    /// The key variable is missing, or the server refused the key (401/403).
    Auth(String),
    /// Retries ran out on 429 / 5xx / timeouts; the row stays undecided.
    GaveUp { kind: &'static str, detail: String },
    /// The body of a 200 was not a chat completion.
    BadResponse(String),
    /// The endpoint's token budget is spent.
    Budget,
    /// Any other 4xx: the request itself is wrong (a bug or an unsupported option).
    Rejected(String),
    /// The response could not be stored in the cache, so it was not used ("stored before used").
    CacheWrite(String),
    /// A batch endpoint: the request went (or goes) into a batch; its answer comes in a later
    /// run ([`Client::settle`] says which).
    Pending,
}

impl CallError {
    /// The failure's kind as reported in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Unreachable(_) => "unreachable",
            CallError::Auth(_) => "auth",
            CallError::GaveUp { kind, .. } => kind,
            CallError::BadResponse(_) => "bad_response",
            CallError::Budget => "token_budget",
            CallError::Rejected(_) => "rejected",
            CallError::CacheWrite(_) => "cache_write",
            CallError::Pending => "pending",
        }
    }

    /// Whether the whole node should stop (every further request would fail the same way).
    pub fn is_fatal(&self) -> bool {
        matches!(self, CallError::Unreachable(_) | CallError::Auth(_))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(s) | CallError::Auth(s) | CallError::Rejected(s) => {
                f.write_str(s)
            }
            CallError::GaveUp { kind, detail } => {
                write!(f, "gave up after retries ({kind}): {detail}")
            }
            CallError::BadResponse(s) => write!(f, "malformed response: {s}"),
            CallError::Budget => f.write_str("the endpoint's token budget is spent"),
            CallError::CacheWrite(s) => write!(
                f,
                "the response could not be stored in the LLM cache, so it was not used: {s}"
            ),
            CallError::Pending => f.write_str("waiting on a batch"),
        }
    }
}

/// One generated token, its logprob, and the alternatives the server reported.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub top: Vec<(String, f64)>,
}

/// A response as cached: the server's JSON and when it arrived.
#[derive(Debug, Clone)]
pub struct Reply {
    pub body: Value,
    /// RFC 3339 time the response arrived (for cached replies: when it first arrived).
    pub at: String,
    pub cached: bool,
}

impl Reply {
    /// The first choice's message text.
    pub fn content(&self) -> Option<&str> {
        self.body
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
    }

    /// The first choice's token logprobs.
    pub fn logprobs(&self) -> Vec<TokenLogprob> {
        let Some(items) = self
            .body
            .pointer("/choices/0/logprobs/content")
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|t| {
                let tok = t.get("token")?.as_str()?.to_string();
                let lp = t.get("logprob")?.as_f64()?;
                let alts = t
                    .get("top_logprobs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| {
                                Some((
                                    x.get("token")?.as_str()?.to_string(),
                                    x.get("logprob")?.as_f64()?,
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(TokenLogprob {
                    token: tok,
                    logprob: lp,
                    top: alts,
                })
            })
            .collect()
    }

    pub fn usage(&self) -> (u64, u64) {
        let g = |k: &str| {
            self.body
                .pointer(&format!("/usage/{k}"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        (g("prompt_tokens"), g("completion_tokens"))
    }
}

/// A client for one endpoint, shared by all of a node's requests.
pub struct Client {
    pub name: String,
    pub endpoint: Endpoint,
    /// What answers depend on (provider, base_url, model, the weights' digest): it joins
    /// every request's cache key, so other weights behind the same alias are asked anew.
    identity: Value,
    cache: Memo,
    pub stats: Arc<Stats>,
    permits: Arc<Semaphore>,
    pace: Option<Mutex<Instant>>,
    api_key: String,
    /// The HTTP client, made on first use (for `provider: local`, once the server is up).
    http: Mutex<Option<async_openai::Client<OpenAIConfig>>>,
    /// The server relabel started, for `provider: local`; stopped when the client is dropped.
    server: Mutex<Option<LocalServer>>,
    server_log: Option<std::path::PathBuf>,
    /// `batch: true`: misses go into a Batch API job instead of out one by one.
    batch: Option<crate::batch::Batcher>,
    /// The HTTP client for the batch calls (result files are larger than any chat answer).
    batch_http: Mutex<Option<async_openai::Client<OpenAIConfig>>>,
    /// The same without retries, for creating a batch: a retried create whose first try
    /// reached the server would make two batches.
    batch_once: Mutex<Option<async_openai::Client<OpenAIConfig>>>,
}

impl Client {
    /// A client for `endpoint`. The API key is read from the environment now (a missing
    /// variable is a clear error) and never stored anywhere but in memory.
    pub fn new(
        name: &str,
        endpoint: Endpoint,
        cache: Memo,
        server_log: Option<std::path::PathBuf>,
    ) -> Result<Client, String> {
        let api_key = match &endpoint.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.trim().is_empty() => k,
                _ => {
                    return Err(format!(
                        "LLM endpoint \"{name}\": the environment variable {var} (its `api_key_env`) is not set; export it before the run"
                    ))
                }
            },
            None => "none".to_string(),
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity = identity(&endpoint);
        let batch = endpoint.batch.then(|| {
            crate::batch::Batcher::new(
                &identity,
                &endpoint.completion_window,
                server_log
                    .as_deref()
                    .and_then(|p| p.parent())
                    .map(|p| p.to_path_buf()),
            )
        });
        Ok(Client {
            identity,
            batch,
            batch_http: Mutex::new(None),
            batch_once: Mutex::new(None),
            name: name.to_string(),
            permits: Arc::new(Semaphore::new(endpoint.max_concurrency.max(1) as usize)),
            pace: endpoint
                .requests_per_minute
                .map(|_| Mutex::new(Instant::now())),
            endpoint,
            cache,
            stats: Arc::default(),
            api_key,
            http: Mutex::new(None),
            server: Mutex::new(None),
            server_log,
        })
    }

    /// The client for a node's endpoint (its `llm` resource), or the local model when the
    /// manifest declares none; a local server logs into the node's work folder.
    pub fn for_node(ctx: &relabel_engine::plugin::NodeContext) -> Result<Client, String> {
        let (name, endpoint) = Endpoint::for_node(ctx)?;
        Client::new(
            &name,
            endpoint,
            ctx.memo(crate::endpoint::SECTION),
            Some(ctx.work_dir.join("llama-server.log")),
        )
    }

    /// What a report says about the endpoint: name, provider, model (never the key).
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, model {})",
            self.name,
            match self.endpoint.provider {
                Provider::Openai => self.endpoint.base_url.clone().unwrap_or_default(),
                Provider::Local => "local llama-server".into(),
            },
            self.endpoint.model
        )
    }

    /// Whether a local server was started (it is started only when a request misses the cache).
    pub async fn server_started(&self) -> bool {
        self.server.lock().await.is_some()
    }

    async fn http(&self) -> Result<async_openai::Client<OpenAIConfig>, CallError> {
        self.http_in(&self.http, MAX_BODY, self.endpoint.max_retries)
            .await
    }

    /// The batch calls' HTTP clients: with the endpoint's retries, and without.
    async fn batch_api(&self) -> Result<crate::batch::Api<'_>, CallError> {
        Ok(crate::batch::Api {
            client: self,
            http: self
                .http_in(&self.batch_http, BATCH_MAX_BODY, self.endpoint.max_retries)
                .await?,
            once: self.http_in(&self.batch_once, BATCH_MAX_BODY, 0).await?,
        })
    }

    /// The HTTP client kept in `slot`, made on first use, accepting bodies up to `max_body`.
    async fn http_in(
        &self,
        slot: &Mutex<Option<async_openai::Client<OpenAIConfig>>>,
        max_body: usize,
        retries: u32,
    ) -> Result<async_openai::Client<OpenAIConfig>, CallError> {
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let base = match self.endpoint.provider {
            Provider::Openai => self.endpoint.base_url.clone().unwrap_or_default(),
            Provider::Local => {
                let server = LocalServer::start(&self.endpoint, self.server_log.as_deref())
                    .await
                    .map_err(CallError::Unreachable)?;
                let url = server.base_url();
                *self.server.lock().await = Some(server);
                url
            }
        };
        let reqwest = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(self.endpoint.timeout.max(0.001)))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(self.endpoint.max_concurrency as usize)
            .build()
            .map_err(|e| CallError::Rejected(format!("building the HTTP client: {e}")))?;
        let service = retrying(reqwest.clone(), retries, self.stats.clone(), max_body);
        let config = OpenAIConfig::new()
            .with_api_base(base.trim_end_matches('/'))
            .with_api_key(self.api_key.clone());
        let client = async_openai::Client::with_config(config)
            .with_http_client(reqwest)
            .with_http_service(service);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Sends a chat completion `request` (without `model`, which the endpoint sets), or answers
    /// it from the cache. Only complete, well-formed responses are cached. A `metadata` field
    /// is left out of the key, and out of the request unless the endpoint's `send_metadata`.
    pub async fn chat(&self, mut request: Value) -> Result<Reply, CallError> {
        request["model"] = json!(self.endpoint.model);
        let metadata = request.as_object_mut().and_then(|m| m.remove("metadata"));
        let key = json!({"endpoint": self.identity, "request": request});
        if let (Some(m), true) = (metadata, self.endpoint.send_metadata) {
            request["metadata"] = m;
        }
        if let Some(b) = &self.batch {
            // Finished batches' answers go into the memo before anything is looked up.
            let api = self.batch_api().await?;
            b.poll_once(&api, &self.cache).await?;
        }
        if let Some(hit) = self.cache.get(&key).ok().flatten() {
            if let Some(body) = hit.get("response") {
                Stats::add(&self.stats.cache_hits, 1);
                return Ok(Reply {
                    body: body.clone(),
                    at: hit
                        .get("at")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    cached: true,
                });
            }
        }
        if let Some(budget) = self.endpoint.token_budget {
            let (p, c) = self.tokens();
            if p.saturating_add(c) >= budget {
                return Err(CallError::Budget);
            }
        }
        if let Some(b) = &self.batch {
            return Err(b.defer(relabel_engine::cache::Memo::key(&key), request));
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        if let (Some(pace), Some(rpm)) = (&self.pace, self.endpoint.requests_per_minute) {
            let gap = Duration::from_secs_f64(60.0 / rpm.max(1) as f64);
            let wait = {
                let mut next = pace.lock().await;
                let now = Instant::now();
                let at = (*next).max(now);
                *next = at + gap;
                at - now
            };
            tokio::time::sleep(wait).await;
        }
        let client = self.http().await?;
        let result: Result<Value, OpenAIError> = client.chat().create_byot(request.clone()).await;
        let body = match result {
            Ok(b) => b,
            Err(e) => return Err(self.classify(e)),
        };
        if body.pointer("/choices/0/message").is_none() {
            Stats::add(&self.stats.bad_responses, 1);
            return Err(CallError::BadResponse(truncate(&body.to_string(), 200)));
        }
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let reply = Reply {
            body,
            at,
            cached: false,
        };
        let (p, c) = reply.usage();
        Stats::add(&self.stats.prompt_tokens, p);
        Stats::add(&self.stats.completion_tokens, c);
        // Durable before we use it: a run killed after this point never pays for it again.
        self.store(&key, &json!({"response": reply.body, "at": reply.at}))?;
        Ok(reply)
    }

    /// Tokens used this run: answers received directly plus those collected from batches.
    fn tokens(&self) -> (u64, u64) {
        let (bp, bc) = self
            .batch
            .as_ref()
            .map(|b| {
                let c = b.counts();
                (c.prompt_tokens, c.completion_tokens)
            })
            .unwrap_or((0, 0));
        (
            Stats::get(&self.stats.prompt_tokens).saturating_add(bp),
            Stats::get(&self.stats.completion_tokens).saturating_add(bc),
        )
    }

    /// Ends a node's asking. For a batch endpoint: submits the requests queued this run as
    /// one batch and says what the node waits for (the node should end pending with it);
    /// None when every request was answered (always None for other endpoints).
    pub async fn settle(&self) -> Result<Option<String>, CallError> {
        let Some(b) = &self.batch else {
            return Ok(None);
        };
        let api = self.batch_api().await?;
        b.submit(&api, &self.cache).await
    }

    /// Embeddings of `texts` from the endpoint's `/embeddings`, one request per call, answered
    /// from the LLM cache when the same request was answered before.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, CallError> {
        let request =
            json!({"model": self.endpoint.model, "input": texts, "encoding_format": "float"});
        let key = json!({"embeddings": request, "endpoint": self.identity});
        let body = match self.cache.get(&key).ok().flatten() {
            Some(hit) => {
                Stats::add(&self.stats.cache_hits, 1);
                hit
            }
            None => {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let client = self.http().await?;
                let body: Value = client
                    .embeddings()
                    .create_byot(request.clone())
                    .await
                    .map_err(|e| self.classify(e))?;
                let (p, _) = (
                    body.pointer("/usage/prompt_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    0,
                );
                Stats::add(&self.stats.prompt_tokens, p);
                body
            }
        };
        let data = body
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| CallError::BadResponse(truncate(&body.to_string(), 200)))?;
        let mut out = vec![Vec::new(); texts.len()];
        for (pos, d) in data.iter().enumerate() {
            let i = d
                .get("index")
                .and_then(Value::as_u64)
                .map(|i| i as usize)
                .unwrap_or(pos);
            let v: Option<Vec<f32>> = d.get("embedding").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64().map(|x| x as f32))
                    .collect()
            });
            match (out.get_mut(i), v) {
                (Some(slot), Some(v)) => *slot = v,
                _ => {
                    return Err(CallError::BadResponse(format!(
                        "embedding {pos} is malformed"
                    )))
                }
            }
        }
        let dim = out.first().map(Vec::len).unwrap_or(0);
        if dim == 0 || out.iter().any(|v| v.len() != dim) {
            Stats::add(&self.stats.bad_responses, 1);
            return Err(CallError::BadResponse(format!(
                "expected {} embeddings of one dimension; got {:?}",
                texts.len(),
                out.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        self.store(&key, &body)?;
        Ok(out)
    }

    /// Stores a response before it is used; a failed write fails the request (and is counted).
    fn store(&self, key: &Value, value: &Value) -> Result<(), CallError> {
        self.cache.put(key, value).map_err(|e| {
            Stats::add(&self.stats.cache_write_errors, 1);
            CallError::CacheWrite(e.to_string())
        })
    }

    /// Server text with the API key's value and any `Bearer ...` token blanked out: a server
    /// that echoes the key (as some 401 messages do) must not put it into reports or logs.
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        if self.api_key != "none" && self.api_key.len() >= 4 {
            out = out.replace(&self.api_key, "[redacted]");
        }
        redact_bearer(&out)
    }

    pub(crate) fn classify(&self, e: OpenAIError) -> CallError {
        let c = self.classify_raw(e);
        let r = |s: String| self.redact(&s);
        match c {
            CallError::Unreachable(s) => CallError::Unreachable(r(s)),
            CallError::Auth(s) => CallError::Auth(r(s)),
            CallError::GaveUp { kind, detail } => CallError::GaveUp {
                kind,
                detail: r(detail),
            },
            CallError::BadResponse(s) => CallError::BadResponse(r(s)),
            CallError::Rejected(s) => CallError::Rejected(r(s)),
            CallError::CacheWrite(s) => CallError::CacheWrite(r(s)),
            CallError::Budget => CallError::Budget,
            CallError::Pending => CallError::Pending,
        }
    }

    fn classify_raw(&self, e: OpenAIError) -> CallError {
        let where_ = || {
            format!(
                "LLM endpoint \"{}\" ({})",
                self.name,
                self.endpoint.base_url.as_deref().unwrap_or("local")
            )
        };
        match e {
            OpenAIError::ApiError(api) => {
                let status = api.status_code.as_u16();
                let detail = format!(
                    "{} {}",
                    status,
                    truncate(&self.redact(&api.api_error.message), 200)
                );
                match status {
                    401 | 403 => CallError::Auth(format!(
                        "{}: the server refused the API key ({detail}); check {}",
                        where_(),
                        self.endpoint
                            .api_key_env
                            .as_deref()
                            .unwrap_or("`api_key_env`")
                    )),
                    429 => CallError::GaveUp {
                        kind: "rate_limited",
                        detail,
                    },
                    s if s >= 500 => CallError::GaveUp {
                        kind: "server_error",
                        detail,
                    },
                    _ => CallError::Rejected(format!("{}: request rejected: {detail}", where_())),
                }
            }
            OpenAIError::Reqwest(r) if r.is_timeout() => CallError::GaveUp {
                kind: "timeout",
                detail: format!("no answer within {} s", self.endpoint.timeout),
            },
            OpenAIError::Reqwest(r) if r.is_connect() => CallError::Unreachable(format!(
                "{} is unreachable: {}; is the server running?",
                where_(),
                error_chain(&r)
            )),
            OpenAIError::Reqwest(r) => CallError::GaveUp {
                kind: "transport_error",
                detail: error_chain(&r),
            },
            OpenAIError::JSONDeserialize(err, body) => {
                Stats::add(&self.stats.bad_responses, 1);
                CallError::BadResponse(format!("{err}: {}", truncate(&self.redact(&body), 200)))
            }
            other => {
                let text = other.to_string();
                if text.contains("timed out") || text.contains("timeout") {
                    Stats::add(&self.stats.timeouts, 1);
                    CallError::GaveUp {
                        kind: "timeout",
                        detail: text,
                    }
                } else {
                    Stats::add(&self.stats.bad_responses, 1);
                    CallError::BadResponse(truncate(&text, 200))
                }
            }
        }
    }

    /// Counters as metrics: requests, cache hits, retried failures by kind, tokens and cost.
    pub fn metrics(&self) -> serde_json::Map<String, Value> {
        let s = &self.stats;
        let g = Stats::get;
        let (p, c) = self.tokens();
        let mut m = serde_json::Map::new();
        m.insert("endpoint".into(), json!(self.describe()));
        m.insert("http_requests".into(), json!(g(&s.http_requests)));
        m.insert("cache_hits".into(), json!(g(&s.cache_hits)));
        let retried: BTreeMap<&str, u64> = [
            ("rate_limited", g(&s.rate_limited)),
            ("server_error", g(&s.server_errors)),
            ("timeout", g(&s.timeouts)),
            ("connect_error", g(&s.connect_errors)),
            ("transport_error", g(&s.transport_errors)),
            ("bad_response", g(&s.bad_responses)),
        ]
        .into();
        m.insert("http_failures".into(), json!(retried));
        m.insert("cache_write_errors".into(), json!(g(&s.cache_write_errors)));
        m.insert("prompt_tokens".into(), json!(p));
        m.insert("completion_tokens".into(), json!(c));
        let batch = self.batch.as_ref().map(|b| b.counts());
        let (bp, bc) = batch
            .as_ref()
            .map_or((0, 0), |b| (b.prompt_tokens, b.completion_tokens));
        // Batch answers at the batch discount, the rest at the list price.
        if let (Some(direct), Some(batched)) = (
            self.endpoint.cost(p - bp, c - bc),
            self.endpoint.cost(bp, bc),
        ) {
            m.insert(
                "cost".into(),
                json!(direct + batched * (1.0 - self.endpoint.batch_discount)),
            );
        }
        if let Some(b) = batch {
            m.insert("batch".into(), json!(b));
        }
        m
    }
}

/// An endpoint's identity for request keys. For `provider: local` the weights' content digest
/// stands in for the server's address (a new port each start); the alias alone is not enough.
fn identity(e: &Endpoint) -> Value {
    match e.provider {
        Provider::Openai => json!({
            "provider": "openai",
            "base_url": e.base_url.as_deref().unwrap_or("").trim_end_matches('/'),
            "model": e.model,
        }),
        Provider::Local => {
            let path = e
                .local_weights()
                .unwrap_or_else(|_| crate::endpoint::local_model_path());
            json!({"provider": "local", "model": e.model, "weights": weights_digest(&path)})
        }
    }
}

/// blake3 of a weights file, remembered per (path, size, mtime) for the life of the process.
fn weights_digest(path: &std::path::Path) -> String {
    use std::collections::HashMap;
    use std::sync::Mutex as StdMutex;
    type Memo = HashMap<(std::path::PathBuf, u64, u128), String>;
    static MEMO: std::sync::OnceLock<StdMutex<Memo>> = std::sync::OnceLock::new();
    let Ok(meta) = std::fs::metadata(path) else {
        return format!("missing:{}", path.display());
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let k = (path.to_path_buf(), meta.len(), mtime);
    let memo = MEMO.get_or_init(Default::default);
    if let Some(d) = memo.lock().expect("memo lock").get(&k) {
        return d.clone();
    }
    let mut h = blake3::Hasher::new();
    let d = match h.update_mmap_rayon(path) {
        Ok(_) => h.finalize().to_hex().to_string(),
        Err(_) => format!("unreadable:{}", path.display()),
    };
    memo.lock().expect("memo lock").insert(k, d.clone());
    d
}

/// Replaces the token after every `Bearer ` (any case) with `[redacted]`.
fn redact_bearer(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(i) = lower[at..].find("bearer ") {
        let start = at + i + "bearer ".len();
        out.push_str(&text[at..start]);
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
            .map(|j| start + j)
            .unwrap_or(text.len());
        if end > start {
            out.push_str("[redacted]");
        }
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// The wait before retry `attempt` (0-based): exponential from 0.5 s, capped at 20 s, with jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 0.5 * 2f64.powi(attempt.min(10) as i32);
    let jitter = rand::random::<f64>() * 0.25 * base;
    Duration::from_secs_f64((base + jitter).min(20.0))
}

/// Retry-After in seconds (the HTTP-date form falls back to the exponential wait).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(300.0)))
}

/// The largest response body accepted: a chat completion of two labels is a few KB.
const MAX_BODY: usize = 8 << 20;

/// The largest batch result file accepted (the Batch API takes input files up to 200 MB).
const BATCH_MAX_BODY: usize = 1 << 30;

/// Reads a response's whole body (at most [`MAX_BODY`]) and hands it on as a complete response.
/// The outer error is the transport's; the inner one says the body was too large.
async fn read_capped(
    mut resp: reqwest::Response,
    max_body: usize,
) -> Result<Result<reqwest::Response, OpenAIError>, reqwest::Error> {
    let too_big = || {
        Err(OpenAIError::InvalidArgument(format!(
            "the response body is larger than {} MiB; refused",
            max_body >> 20
        )))
    };
    if resp.content_length().is_some_and(|n| n as usize > max_body) {
        return Ok(too_big());
    }
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > max_body {
            return Ok(too_big());
        }
    }
    let mut out = http::Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(Ok(reqwest::Response::from(out)))
}

/// The HTTP layer under async-openai: sends a request, retrying 429 (after Retry-After when the
/// server gives one), 5xx, timeouts and refused connections up to `max_retries` times, and
/// counting each kind. The final failed response goes up for async-openai to turn into an error.
fn retrying(
    client: reqwest::Client,
    max_retries: u32,
    stats: Arc<Stats>,
    max_body: usize,
) -> impl tower::Service<
    HttpRequestFactory,
    Response = reqwest::Response,
    Error = OpenAIError,
    Future = impl Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(move |factory: HttpRequestFactory| {
        let client = client.clone();
        let stats = stats.clone();
        async move {
            let mut attempt = 0u32;
            loop {
                let request = factory.build().await?;
                Stats::add(&stats.http_requests, 1);
                let last = attempt >= max_retries;
                let wait = match client.execute(request).await {
                    Ok(resp) if resp.status().as_u16() == 429 => {
                        Stats::add(&stats.rate_limited, 1);
                        if last {
                            return Ok(resp);
                        }
                        retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt))
                    }
                    Ok(resp) if resp.status().is_server_error() => {
                        Stats::add(&stats.server_errors, 1);
                        if last {
                            return Ok(resp);
                        }
                        backoff(attempt)
                    }
                    Ok(resp) => {
                        // Read the body here, so a body slower than the timeout or cut off by
                        // the connection is retried like any transport fault, and a huge one is
                        // refused instead of stored.
                        match read_capped(resp, max_body).await {
                            Ok(Ok(resp)) => return Ok(resp),
                            Ok(Err(too_big)) => return Err(too_big),
                            Err(e) if e.is_timeout() => {
                                Stats::add(&stats.timeouts, 1);
                                if last {
                                    return Err(OpenAIError::Reqwest(e));
                                }
                                backoff(attempt)
                            }
                            Err(e) => {
                                Stats::add(&stats.transport_errors, 1);
                                if last {
                                    return Err(OpenAIError::Reqwest(e));
                                }
                                backoff(attempt)
                            }
                        }
                    }
                    Err(e) if e.is_timeout() => {
                        Stats::add(&stats.timeouts, 1);
                        if last {
                            return Err(OpenAIError::Reqwest(e));
                        }
                        backoff(attempt)
                    }
                    Err(e) if e.is_connect() => {
                        Stats::add(&stats.connect_errors, 1);
                        // A refused connection rarely heals: two quick retries, then report it.
                        if last || attempt >= 2 {
                            return Err(OpenAIError::Reqwest(e));
                        }
                        backoff(attempt)
                    }
                    Err(e) if e.is_builder() => return Err(OpenAIError::Reqwest(e)),
                    // A reset, or a close without a response: a network blip, asked again here
                    // (the same request), never as a new request at another temperature.
                    Err(e) => {
                        Stats::add(&stats.transport_errors, 1);
                        if last {
                            return Err(OpenAIError::Reqwest(e));
                        }
                        backoff(attempt)
                    }
                };
                tracing::debug!(attempt, ?wait, "retrying an LLM request");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(path: &std::path::Path) -> Endpoint {
        let mut e = Endpoint::default_local();
        e.model_path = Some(path.to_path_buf());
        e
    }

    #[test]
    fn a_local_endpoints_identity_is_its_weights_content_not_its_alias() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, a2) = (
            dir.path().join("a.gguf"),
            dir.path().join("b.gguf"),
            dir.path().join("copy-of-a.gguf"),
        );
        std::fs::write(&a, b"weights one").unwrap();
        std::fs::write(&b, b"weights two").unwrap();
        std::fs::write(&a2, b"weights one").unwrap();
        // Same alias, other weights: other answers.
        assert_ne!(identity(&local(&a)), identity(&local(&b)));
        // The same weights under another file name: the same answers.
        assert_eq!(identity(&local(&a)), identity(&local(&a2)));
        assert_eq!(identity(&local(&a))["model"], LOCAL_ALIAS_FOR_TEST);
    }

    const LOCAL_ALIAS_FOR_TEST: &str = crate::endpoint::LOCAL_MODEL_ALIAS;

    #[test]
    fn bearer_tokens_are_redacted() {
        assert_eq!(
            redact_bearer("Incorrect API key provided: Bearer sk-abc123. bearer xyz, ok"),
            "Incorrect API key provided: Bearer [redacted] bearer [redacted], ok"
        );
    }
}
