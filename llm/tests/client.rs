//! The LLM client against scripted servers: request keys name the endpoint, a failed cache
//! write fails the request, transport faults are retried in the HTTP layer (never re-asked
//! at another temperature), server text never carries the key, and numbers from a server
//! cannot wrap a counter or flood the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relabel_engine::cache::{CacheError, Entry, EntryList, FileMemo, LastRecord, Memo, Store};
use relabel_llm::client::{CallError, Client, Stats};
use relabel_llm::endpoint::Endpoint;
use relabel_testkit::{chat_completion, Reply, Server};
use serde_json::{json, Value};

/// An in-memory store whose LLM writes fail when `fail_writes` is set.
#[derive(Default)]
struct MemStore {
    llm: Mutex<HashMap<String, Vec<u8>>>,
    fail_writes: bool,
}

impl Store for MemStore {
    fn get(&self, _: &str) -> Result<Option<Entry>, CacheError> {
        Ok(None)
    }
    fn put(&self, _: &str, _: &Entry) -> Result<(), CacheError> {
        Ok(())
    }
    fn remove(&self, _: &str) -> Result<(), CacheError> {
        Ok(())
    }
    fn entries(&self) -> Result<EntryList, CacheError> {
        Ok(Vec::new())
    }
    fn last(&self, _: &str) -> Result<Option<LastRecord>, CacheError> {
        Ok(None)
    }
    fn set_last(&self, _: &str, _: &LastRecord) -> Result<(), CacheError> {
        Ok(())
    }
    fn lasts(&self) -> Result<Vec<(String, LastRecord)>, CacheError> {
        Ok(Vec::new())
    }
    fn file_memo(&self, _: &str) -> Result<Option<FileMemo>, CacheError> {
        Ok(None)
    }
    fn set_file_memo(&self, _: &str, _: &FileMemo) -> Result<(), CacheError> {
        Ok(())
    }
    fn memo_get(&self, _: &str, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.llm.lock().unwrap().get(key).cloned())
    }
    fn memo_put(&self, _: &str, key: &str, value: &[u8]) -> Result<(), CacheError> {
        if self.fail_writes {
            return Err(CacheError::Io {
                path: "db".into(),
                source: std::io::Error::other("No space left on device"),
            });
        }
        self.llm
            .lock()
            .unwrap()
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn memo_len(&self, _: &str) -> usize {
        self.llm.lock().unwrap().len()
    }
    fn flush(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

/// Runs `f` on a fresh runtime in its own thread (the scripted servers start runtimes of their
/// own, which cannot be done from inside one).
fn on_runtime<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(f);
    })
    .join()
    .unwrap();
}

fn endpoint(base_url: &str, extra: Value) -> Endpoint {
    let mut e =
        json!({"base_url": base_url, "model": "same-name", "timeout": 1.0, "max_retries": 2});
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    serde_json::from_value(e).unwrap()
}

/// A client of `server` with `extra` endpoint fields, on `store`.
fn client(server: &Server, extra: Value, store: Arc<dyn Store>) -> Client {
    Client::new(
        "s",
        endpoint(&server.base_url(), extra),
        Memo::new(store, "llm"),
        None,
    )
    .unwrap()
}

fn fresh() -> Arc<dyn Store> {
    Arc::new(MemStore::default())
}

fn answering(text: &'static str) -> Server {
    Server::start(Arc::new(move |_| Reply::ok(chat_completion(text)))).unwrap()
}

fn question() -> Value {
    json!({"messages": [{"role": "user", "content": "billing or shipping?"}]})
}

#[test]
fn two_servers_serving_the_same_model_name_are_asked_separately() {
    on_runtime(async move {
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let (a, b) = (answering("from a"), answering("from b"));
        let ca = client(&a, json!({}), store.clone());
        let cb = client(&b, json!({}), store.clone());
        let ra = ca.chat(question()).await.unwrap();
        let rb = cb.chat(question()).await.unwrap();
        assert_eq!(ra.content(), Some("from a"));
        assert_eq!(
            rb.content(),
            Some("from b"),
            "b's answer, not a's cached one"
        );
        assert!(!rb.cached);
        assert_eq!((a.count(), b.count()), (1, 1));
        // The same endpoint again is a cache hit.
        let again = client(&a, json!({}), store);
        assert!(again.chat(question()).await.unwrap().cached);
        assert_eq!(a.count(), 1);
    });
}

#[test]
fn a_failed_cache_write_fails_the_request_and_is_counted() {
    on_runtime(async move {
        let store: Arc<dyn Store> = Arc::new(MemStore {
            fail_writes: true,
            ..MemStore::default()
        });
        let s = answering("billing");
        let c = client(&s, json!({}), store);
        let e = c.chat(question()).await.unwrap_err();
        assert!(matches!(e, CallError::CacheWrite(_)), "{e:?}");
        assert_eq!(e.kind(), "cache_write");
        assert!(e.to_string().contains("No space left"), "{e}");
        assert_eq!(Stats::get(&c.stats.cache_write_errors), 1);
        assert_eq!(c.metrics()["cache_write_errors"], 1);
    });
}

/// A server that answers the n-th request of each connection-fault kind with `fault`, then
/// properly; counts every request.
fn flaky(fault: Reply) -> (Server, Arc<AtomicU64>) {
    let n = Arc::new(AtomicU64::new(0));
    let seen = n.clone();
    let s = Server::start(Arc::new(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            fault.clone()
        } else {
            Reply::ok(chat_completion("billing"))
        }
    }))
    .unwrap();
    (s, n)
}

#[test]
fn a_connection_closed_without_a_response_is_retried_with_the_same_request() {
    on_runtime(async move {
        let (s, n) = flaky(Reply::Close);
        let c = client(&s, json!({}), fresh());
        let r = c.chat(question()).await.unwrap();
        assert_eq!(r.content(), Some("billing"));
        assert_eq!(n.load(Ordering::SeqCst), 2);
        assert_eq!(Stats::get(&c.stats.transport_errors), 1);
        assert_eq!(c.metrics()["http_failures"]["transport_error"], 1);
    });
}

#[test]
fn a_body_slower_than_the_timeout_is_retried_and_counted() {
    on_runtime(async move {
        let (s, n) = flaky(Reply::SlowBody {
            body: chat_completion("billing"),
            pause: Duration::from_secs(3),
        });
        let c = client(&s, json!({}), fresh());
        let r = c.chat(question()).await.unwrap();
        assert_eq!(r.content(), Some("billing"));
        assert_eq!(n.load(Ordering::SeqCst), 2);
        assert_eq!(Stats::get(&c.stats.timeouts), 1);
    });
}

#[test]
fn an_api_key_echoed_by_the_server_never_reaches_the_error() {
    on_runtime(async move {
        let key = "sk-test-0123456789abcdefSECRET";
        std::env::set_var("RELABEL_LLM_TEST_KEY", key);
        let s = Server::start(Arc::new(move |_| {
        Reply::status(
            401,
            &json!({"error": {"message": format!("Incorrect API key provided: Bearer {key}. Or sk-other-Bearer"), "type": "invalid_request_error"}}).to_string(),
        )
    }))
    .unwrap();
        let c = client(&s, json!({"api_key_env": "RELABEL_LLM_TEST_KEY"}), fresh());
        let e = c.chat(question()).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, CallError::Auth(_)), "{e:?}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    });
}

#[test]
fn a_huge_usage_cannot_wrap_the_token_counter_or_bypass_the_budget() {
    on_runtime(async move {
        let s = Server::start(Arc::new(|_| {
            let mut body: Value = serde_json::from_str(&chat_completion("billing")).unwrap();
            body["usage"] = json!({"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX});
            Reply::ok(body.to_string())
        }))
        .unwrap();
        let c = client(&s, json!({"token_budget": 1000}), fresh());
        c.chat(question()).await.unwrap();
        let other = json!({"messages": [{"role": "user", "content": "another"}]});
        assert_eq!(c.chat(other).await.unwrap_err(), CallError::Budget);
        assert_eq!(s.count(), 1);
    });
}

#[test]
fn a_response_body_over_the_cap_is_refused_and_not_stored() {
    on_runtime(async move {
        let big = "x".repeat(9 << 20);
        let s = Server::start(Arc::new(move |_| Reply::ok(chat_completion(&big)))).unwrap();
        let store = Arc::new(MemStore::default());
        let dyn_store: Arc<dyn Store> = store.clone();
        let c = client(&s, json!({}), dyn_store);
        let e = c.chat(question()).await.unwrap_err();
        assert!(e.to_string().contains("larger than 8 MiB"), "{e}");
        assert_eq!(store.memo_len("llm"), 0);
    });
}

#[test]
fn request_metadata_reaches_the_server_only_when_asked_and_never_splits_the_cache() {
    on_runtime(async move {
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let log = seen.clone();
        let s = Server::start(Arc::new(move |req| {
            let body = req.json().unwrap_or(Value::Null);
            log.lock().unwrap().push(body["metadata"].clone());
            Reply::ok(chat_completion("billing"))
        }))
        .unwrap();
        let with = |id: &str| {
            let mut q = question();
            q["metadata"] = json!({"relabel_split": "train", "relabel_id": id});
            q
        };
        // Off (the default): the field is not sent.
        let off = client(&s, json!({}), fresh());
        off.chat(with("r1")).await.unwrap();
        // On: sent as given; another row's identical question is the same answer's key.
        let store = fresh();
        let on = client(&s, json!({"send_metadata": true}), store.clone());
        assert!(!on.chat(with("r1")).await.unwrap().cached);
        assert!(on.chat(with("r2")).await.unwrap().cached);
        // And the key is the one a request without metadata has.
        let plain = client(&s, json!({}), store);
        assert!(plain.chat(question()).await.unwrap().cached);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].is_null(), "{seen:?}");
        assert_eq!(
            seen[1],
            json!({"relabel_split": "train", "relabel_id": "r1"})
        );
    });
}
