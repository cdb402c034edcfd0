//! relabel-testkit: a scripted OpenAI-compatible HTTP server for fault tests and benchmarks
//! (never for real answers; dev-only, never in the `relabel` binary). Each request gets the
//! reply a handler scripts (a status, headers, a body, a delay, a hang, a dropped connection,
//! a trickled body), or is forwarded to a real server while being counted.

pub mod batch;
pub mod s3;
pub mod scenes;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// 1-based arrival number.
    pub seq: u64,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Send {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        delay: Duration,
    },
    /// Never answer (the client must time out).
    Hang,
    /// Close the connection without answering (a reset or a dropped connection).
    Close,
    /// Send the status line, headers and the first half of the body, then wait this long
    /// before the rest (a body slower than the client's timeout).
    SlowBody { body: String, pause: Duration },
}

impl Reply {
    pub fn ok(body: String) -> Reply {
        Reply::Send {
            status: 200,
            headers: Vec::new(),
            body,
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Send {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(self, d: Duration) -> Reply {
        match self {
            Reply::Send {
                status,
                headers,
                body,
                ..
            } => Reply::Send {
                status,
                headers,
                body,
                delay: d,
            },
            other => other,
        }
    }

    pub fn header(self, k: &str, v: &str) -> Reply {
        match self {
            Reply::Send {
                status,
                mut headers,
                body,
                delay,
            } => {
                headers.push((k.into(), v.into()));
                Reply::Send {
                    status,
                    headers,
                    body,
                    delay,
                }
            }
            other => other,
        }
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

enum Mode {
    Script(Handler),
    Forward(SocketAddr),
}

/// A running server on its own small runtime; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Serves `handler`'s replies on a free loopback port.
    pub fn start(handler: Handler) -> io::Result<Server> {
        Self::spawn(Mode::Script(handler), 0)
    }

    /// Serves `handler` on loopback port `port` (a fixed port keeps an endpoint's `base_url`, and
    /// so the relabeler's cache keys, the same from one benchmark run to the next).
    pub fn start_on(port: u16, handler: Handler) -> io::Result<Server> {
        Self::spawn(Mode::Script(handler), port)
    }

    /// Forwards every request to `upstream`, counting them: proof of how many requests a run sent.
    pub fn proxy(upstream: SocketAddr) -> io::Result<Server> {
        Self::spawn(Mode::Forward(upstream), 0)
    }

    fn spawn(mode: Mode, port: u16) -> io::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // Bound without blocking on the runtime, so a server can be started from async code.
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std_listener.set_nonblocking(true)?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let mode = Arc::new(mode);
        let counter = requests.clone();
        runtime.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let mode = mode.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, &mode, &counter).await;
                });
            }
        });
        Ok(Server {
            addr,
            requests,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:PORT/v1`, for an endpoint's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far.
    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One request read off a connection.
struct Raw {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The request's bytes as received (for forwarding).
    bytes: Vec<u8>,
}

async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Raw>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let first = lines.next().unwrap_or("");
            let mut parts = first.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 8192];
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let bytes = buf[..end + 4 + len].to_vec();
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Ok(Some(Raw {
                method,
                path,
                headers,
                body,
                bytes,
            }));
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(mut sock: TcpStream, mode: &Mode, counter: &AtomicU64) -> io::Result<()> {
    let mut buf = Vec::new();
    while let Some(Raw {
        method,
        path,
        headers,
        body,
        bytes: raw,
    }) = read_request(&mut sock, &mut buf).await?
    {
        let seq = counter.fetch_add(1, Ordering::SeqCst) + 1;
        match mode {
            Mode::Forward(up) => {
                let mut upstream = TcpStream::connect(up).await?;
                // One request per upstream connection: ask it to close when done.
                let text = String::from_utf8_lossy(&raw);
                let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                let head: Vec<&str> = head
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                let mut out = head.join("\r\n").into_bytes();
                out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
                out.extend_from_slice(&body);
                upstream.write_all(&out).await?;
                let mut resp = Vec::new();
                upstream.read_to_end(&mut resp).await?;
                sock.write_all(&resp).await?;
                return Ok(()); // the response said `Connection: close`
            }
            Mode::Script(handler) => {
                let req = Request {
                    method,
                    path,
                    headers,
                    body,
                    seq,
                };
                match handler(&req) {
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return Ok(());
                    }
                    Reply::Close => return Ok(()),
                    Reply::SlowBody { body, pause } => {
                        let half = body.len() / 2;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        sock.write_all(head.as_bytes()).await?;
                        sock.write_all(&body.as_bytes()[..half]).await?;
                        sock.flush().await?;
                        tokio::time::sleep(pause).await;
                        sock.write_all(&body.as_bytes()[half..]).await?;
                    }
                    Reply::Send {
                        status,
                        headers,
                        body,
                        delay,
                    } => {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let mut out = format!(
                            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                            reason(status),
                            body.len()
                        );
                        for (k, v) in headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        out.push_str(&body);
                        sock.write_all(out.as_bytes()).await?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// An OpenAI chat completion body whose message is `content`.
pub fn chat_completion(content: &str) -> String {
    json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [{
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": content},
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": 8, "total_tokens": 108},
    })
    .to_string()
}

/// The two candidate labels a binary-relabel request offers (its JSON schema's enum, or a
/// vLLM request's `structured_outputs.choice`).
pub fn offered(request: &Value) -> Vec<String> {
    request
        .pointer("/response_format/json_schema/schema/properties/label/enum")
        .or_else(|| request.pointer("/structured_outputs/choice"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The text of the request's last user message (for content parts, its text parts joined by
/// newlines; images left out: see [`image_urls`]).
pub fn user_message(request: &Value) -> String {
    match user_content(request) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The content of the request's last user message (a string, or an array of parts).
fn user_content(request: &Value) -> Option<&Value> {
    request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
        .map(|m| &m["content"])
}

/// The urls of the `image_url` content parts of the request's last user message, in order.
pub fn image_urls(request: &Value) -> Vec<String> {
    user_content(request)
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p["type"] == "image_url")
                .filter_map(|p| p.pointer("/image_url/url").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The row a request is about: its `metadata.relabel_id` (sent by endpoints with
/// `send_metadata: true`), whatever the prompt's template.
pub fn request_row(request: &Value) -> Option<&str> {
    request
        .pointer("/metadata/relabel_id")
        .and_then(Value::as_str)
}

/// Where in the row a request's question is (`metadata.relabel_site`, the flag's site as JSON;
/// tagging: the span), when the task has sites.
pub fn request_site(request: &Value) -> Option<Value> {
    request
        .pointer("/metadata/relabel_site")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
}

/// A server answering with `inner` that also records each request's user message (the prompt),
/// for tests that check what a judge was shown.
pub fn recording_server(
    inner: Handler,
) -> io::Result<(Server, Arc<std::sync::Mutex<Vec<String>>>)> {
    let prompts: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = prompts.clone();
    let server = Server::start(Arc::new(move |req| {
        let body = req.json().unwrap_or(Value::Null);
        if let Ok(mut p) = seen.lock() {
            p.push(user_message(&body));
        }
        inner(req)
    }))?;
    Ok((server, prompts))
}

/// The true option of a question at a site of a row (tagging: the gold reading's title of the
/// span), for judges simulated on tasks with several questions per row.
pub type SiteTruth = Box<dyn Fn(&str, &Value) -> Option<String> + Send + Sync>;

/// A simulated annotator of known accuracy, for measurement only (never a node kind): it answers
/// a two-candidate relabel request with the row's true label with probability `p` and with the
/// other candidate otherwise; when neither candidate is the true label it picks one at random.
/// It finds the row from the request's metadata ([`request_row`]; the endpoint needs
/// `send_metadata: true`), never from the prompt, so any template works with it.
/// `p` comes from the request's model name, `sim-p0.9`, so one server serves several judges
/// (and each judge's answers are cached apart). Draws are a hash of (seed, item, candidates):
/// the same question always gets the same answer, and a row a judge of accuracy p answers right
/// is answered right by every judge of higher p.
pub struct Annotator {
    truth: std::collections::HashMap<String, String>,
    /// For requests with a site: the truth at that site.
    site_truth: Option<SiteTruth>,
    seed: u64,
    latency: Duration,
    /// Requests whose row has no known true label, or name no row (answered with HTTP 400).
    pub unknown: AtomicU64,
}

impl Annotator {
    /// `truth`: row id -> true label.
    pub fn new(
        truth: std::collections::HashMap<String, String>,
        seed: u64,
        latency: Duration,
    ) -> Arc<Annotator> {
        Arc::new(Annotator {
            truth,
            site_truth: None,
            seed,
            latency,
            unknown: AtomicU64::new(0),
        })
    }

    /// A judge for questions about sites of rows (tagging spans): `truth(row id, site)` is the
    /// true option there.
    pub fn of_sites(truth: SiteTruth, seed: u64, latency: Duration) -> Arc<Annotator> {
        Arc::new(Annotator {
            truth: Default::default(),
            site_truth: Some(truth),
            seed,
            latency,
            unknown: AtomicU64::new(0),
        })
    }

    /// The judge's name for accuracy `p`: the endpoint's `model`.
    pub fn model_name(p: f64) -> String {
        format!("sim-p{p}")
    }

    fn draw(&self, item: &str, pair: &[String], salt: &str) -> f64 {
        let mut sorted = pair.to_vec();
        sorted.sort();
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes());
        h.update(salt.as_bytes());
        h.update(item.as_bytes());
        for c in &sorted {
            h.update(&[0]);
            h.update(c.as_bytes());
        }
        let b = h.finalize();
        let x = u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"));
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The label the judge of accuracy `p` gives `item` offered `pair`; None for an unknown item.
    pub fn answer(&self, p: f64, item: &str, pair: &[String]) -> Option<String> {
        let truth = self.truth.get(item)?;
        Some(self.pick(p, item, truth, pair))
    }

    /// [`Annotator::answer`] given the truth.
    fn pick(&self, p: f64, item: &str, truth: &str, pair: &[String]) -> String {
        let pick = if let Some(i) = pair.iter().position(|c| c == truth) {
            if self.draw(item, pair, "right") < p {
                i
            } else {
                1 - i
            }
        } else {
            usize::from(self.draw(item, pair, "neither") < 0.5)
        };
        pair[pick].clone()
    }

    /// The server's handler.
    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |req| me.respond(&req.json().unwrap_or(Value::Null)))
    }

    /// The answer to one chat request body (served directly, or as a line of a batch). A
    /// vLLM-style request (`structured_outputs.choice`) is answered with the bare label.
    pub fn respond(&self, body: &Value) -> Reply {
        let me = self;
        {
            let pair = offered(body);
            let p = body["model"]
                .as_str()
                .and_then(|m| m.strip_prefix("sim-p"))
                .and_then(|p| p.parse::<f64>().ok());
            let (Some(p), 2) = (p, pair.len()) else {
                return Reply::status(400, "expected model sim-pP and two offered labels");
            };
            let answer = match (&me.site_truth, request_row(body), request_site(body)) {
                (Some(f), Some(row), Some(site)) => f(row, &site).map(|t| {
                    let item = format!("{row}@{site}");
                    me.pick(p, &item, &t, &pair)
                }),
                (None, Some(row), _) => me.answer(p, row, &pair),
                _ => None,
            };
            let bare = body.pointer("/structured_outputs/choice").is_some();
            match answer {
                Some(label) if bare => Reply::ok(chat_completion(&label)).delayed(me.latency),
                Some(label) => Reply::ok(chat_completion(&json!({ "label": label }).to_string()))
                    .delayed(me.latency),
                None => {
                    me.unknown.fetch_add(1, Ordering::Relaxed);
                    Reply::status(
                        400,
                        "unknown row (or no metadata.relabel_id: set the endpoint's send_metadata)",
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_annotator_is_right_with_probability_p_and_stable() {
        let pair = vec!["a".to_string(), "b".to_string()];
        let truth = (0..4000)
            .map(|i| (format!("item {i}"), pair[i % 2].clone()))
            .collect();
        let ann = Annotator::new(truth, 7, Duration::ZERO);
        for p in [0.8, 0.9, 1.0] {
            let right = (0..4000)
                .filter(|i| {
                    let item = format!("item {i}");
                    ann.answer(p, &item, &pair).unwrap() == pair[i % 2]
                })
                .count() as f64
                / 4000.0;
            // 4000 draws: the standard error is <= 0.008.
            assert!((right - p).abs() < 0.03, "p {p}: right {right}");
        }
        // Coupled: a row answered right at 0.8 is answered right at 0.9; order does not matter.
        let flipped = vec!["b".to_string(), "a".to_string()];
        for i in 0..500 {
            let item = format!("item {i}");
            let t = &pair[i % 2];
            let a8 = ann.answer(0.8, &item, &pair).unwrap();
            if &a8 == t {
                assert_eq!(&ann.answer(0.9, &item, &pair).unwrap(), t);
            }
            assert_eq!(a8, ann.answer(0.8, &item, &flipped).unwrap());
        }
        assert_eq!(ann.answer(0.9, "never seen", &pair), None);
        let req =
            json!({"messages": [], "metadata": {"relabel_split": "train", "relabel_id": "r7"}});
        assert_eq!(request_row(&req), Some("r7"));
        assert_eq!(request_row(&json!({"messages": []})), None);
    }
}
