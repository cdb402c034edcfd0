//! `cargo xtask bench batch`: 5,000 judge requests through the Batch API path against the
//! scripted files+batches server: our work per request (the submitting run plus the collecting
//! run, less the server's own time), memory sampled through both runs, and a run killed after
//! creating its batch and resumed, which must send each request exactly once. Peer: the
//! official `openai` Python client doing the same batch flow (build the JSONL, upload, create,
//! poll, download, parse) against the same server, in the same run.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use relabel_testkit::batch::BatchApi;
use relabel_testkit::{chat_completion, offered, Reply, Server};
use serde_json::{json, Value};

use crate::bench::{json_output, target};
use crate::bench_llm::{run_sampled, write_project, ROWS};

/// Answers every line at once with the second option offered.
fn api() -> Arc<BatchApi> {
    BatchApi::new(Arc::new(|body: &Value| {
        let pair = offered(body);
        let answer = pair.get(1).or(pair.first()).cloned().unwrap_or_default();
        Reply::ok(chat_completion(&json!({ "label": answer }).to_string()))
    }))
}

fn endpoint(base_url: &str) -> String {
    format!(
        "{{base_url: \"{base_url}\", model: scripted, batch: true, timeout: 60, max_retries: 0}}"
    )
}

const PEER: &str = r#"
import json, resource, sys, time
from openai import OpenAI
base, n = sys.argv[1], int(sys.argv[2])
client = OpenAI(base_url=base, api_key="none", max_retries=0, timeout=60)
labels = ["billing", "shipping", "refund", "account"]
t0 = time.perf_counter()
lines = []
for i in range(n):
    l, c = labels[i % 4], labels[(i + 1) % 4]
    body = {"model": "scripted", "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "user", "content": f"customer message number {i}: {l} or {c}?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "binary_choice", "strict": True,
                "schema": {"type": "object", "properties": {"label": {"type": "string", "enum": [l, c]}},
                           "required": ["label"], "additionalProperties": False}}}}
    lines.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
f = client.files.create(file=("batch.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
submit = time.perf_counter() - t0
t1 = time.perf_counter()
while b.status not in ("completed", "failed", "expired", "cancelled"):
    b = client.batches.retrieve(b.id)
text = client.files.content(b.output_file_id).text
ok = 0
for line in text.splitlines():
    r = json.loads(line)
    label = json.loads(r["response"]["body"]["choices"][0]["message"]["content"])["label"]
    ok += label in labels
collect = time.perf_counter() - t1
print(json.dumps({"seconds": submit + collect, "submit_seconds": submit, "collect_seconds": collect,
                  "ok": ok, "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"#;

pub fn batch(root: &std::path::Path, _args: &[String]) -> Result<Value> {
    let bin = crate::relabel_bin(root)?;
    let work = crate::home_cache().join("bench/batch");
    let _ = std::fs::remove_dir_all(&work);

    // The clean path: a run that submits, then a run that collects.
    let api1 = api();
    let server = Server::start(api1.handler())?;
    let dir = work.join("clean");
    write_project(&dir, &endpoint(&server.base_url()))?;
    let cache = dir.join("cache");
    let busy0 = api1.busy_ns.load(Ordering::SeqCst);
    let submit = run_sampled(&bin, &dir, &cache, false)?;
    let busy1 = api1.busy_ns.load(Ordering::SeqCst);
    if submit.code != 3 {
        bail!(
            "the submitting run should end pending (exit 3); it exited {}",
            submit.code
        );
    }
    let collect = run_sampled(&bin, &dir, &cache, false)?;
    let busy2 = api1.busy_ns.load(Ordering::SeqCst);
    let m = &collect.node["metrics"];
    if collect.code != 0 || m["rows"] != ROWS || m["undecided"] != 0 {
        bail!(
            "the collecting run did not decide every row: exit {}, {m}",
            collect.code
        );
    }
    let server_s = |a: u64, b: u64| (b - a) as f64 / 1e9;
    let (submit_server, collect_server) = (server_s(busy0, busy1), server_s(busy1, busy2));
    let ours = |s: &crate::bench_llm::Sampled, server: f64| {
        s.node["seconds"].as_f64().unwrap_or(s.wall) - server
    };
    let (submit_ours, collect_ours) =
        (ours(&submit, submit_server), ours(&collect, collect_server));
    let work_s = submit_ours + collect_ours;
    let wall_work = submit.wall + collect.wall - submit_server - collect_server;
    let rss = |s: &crate::bench_llm::Sampled| s.samples.iter().map(|x| x.1).max().unwrap_or(0);
    let peak = rss(&submit).max(rss(&collect));
    println!(
        "relabel batch path: {ROWS} requests; node work {submit_ours:.2} s submitting + {collect_ours:.2} s collecting = {:.0} req/s (whole processes: {:.0} req/s); server's own time {:.2} s left out; peak RSS {} MB",
        ROWS as f64 / work_s,
        ROWS as f64 / wall_work,
        submit_server + collect_server,
        peak / 1024
    );

    // Killed after creating the batch (its reply held back), resumed on the same server.
    let api2 = api();
    let slow = Arc::new(AtomicBool::new(true));
    let server2 = {
        let inner = api2.handler();
        let slow = slow.clone();
        Server::start(Arc::new(move |req| {
            let reply = inner(req);
            if slow.load(Ordering::SeqCst) && req.method == "POST" && req.path.ends_with("/batches")
            {
                reply.delayed(Duration::from_secs(60))
            } else {
                reply
            }
        }))?
    };
    let kdir = work.join("killed");
    write_project(&kdir, &endpoint(&server2.base_url()))?;
    let kcache = kdir.join("cache");
    let mut child = Command::new(&bin)
        .args(["run", "p.yaml", "--cache"])
        .arg(&kcache)
        .current_dir(&kdir)
        .env("RELABEL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    while api2.created.load(Ordering::SeqCst) == 0 {
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            bail!("the killed run never created its batch");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill()?;
    child.wait()?;
    slow.store(false, Ordering::SeqCst);
    let resumed = run_sampled(&bin, &kdir, &kcache, false)?;
    let seen = api2.seen.lock().expect("seen lock").clone();
    let twice = seen.values().filter(|n| **n > 1).count();
    let once = seen.len() == ROWS && twice == 0 && api2.created.load(Ordering::SeqCst) == 1;
    let rm = &resumed.node["metrics"];
    println!(
        "killed after create, resumed: exit {}, {} distinct requests uploaded, {twice} more than once; batches created {}; undecided {}",
        resumed.code,
        seen.len(),
        api2.created.load(Ordering::SeqCst),
        rm["undecided"]
    );

    let (created1, uploads1) = (
        api1.created.load(Ordering::SeqCst),
        api1.uploads.load(Ordering::SeqCst),
    );
    // The peer: the openai client's batch flow against the clean path's server.
    let py = crate::bench::bench_venv("openai", &["openai==3.51.0"])?.join("bin/python");
    let pbusy0 = api1.busy_ns.load(Ordering::SeqCst);
    let peer = json_output(
        Command::new(py)
            .arg("-c")
            .arg(PEER)
            .arg(server.base_url())
            .arg(ROWS.to_string()),
        "the openai peer",
    )?;
    let peer_server = server_s(pbusy0, api1.busy_ns.load(Ordering::SeqCst));
    let peer_s = peer["seconds"].as_f64().unwrap_or(f64::NAN) - peer_server;
    println!(
        "openai (Python) batch flow: {ROWS} requests in {peer_s:.2} s of its own work = {:.0} req/s; max RSS {} MB",
        ROWS as f64 / peer_s,
        peer["max_rss_kb"].as_u64().unwrap_or(0) / 1024
    );
    Ok(json!({
        "requests": ROWS,
        "relabel": {
            "submit_node_seconds": submit_ours,
            "collect_node_seconds": collect_ours,
            "requests_per_s": ROWS as f64 / work_s,
            "requests_per_s_whole_processes": ROWS as f64 / wall_work,
            "server_seconds_left_out": submit_server + collect_server,
            "peak_rss_kb": peak,
            "batches_created": created1,
            "uploads": uploads1,
        },
        "killed_and_resumed": {
            "resumed_exit": resumed.code,
            "distinct_requests_uploaded": seen.len(),
            "uploaded_more_than_once": twice,
            "batches_created": api2.created.load(Ordering::SeqCst),
            "undecided_after_resume": rm["undecided"],
        },
        "openai_python": {
            "seconds": peer_s,
            "requests_per_s": ROWS as f64 / peer_s,
            "submit_seconds": peer["submit_seconds"],
            "collect_seconds": peer["collect_seconds"],
            "max_rss_kb": peer["max_rss_kb"],
            "server_seconds_left_out": peer_server,
        },
        "note": "our work includes reading the dataset and flags, rendering 5,000 prompts, the memo writes and the decisions; the peer only builds fixed request bodies and parses the answers",
        "targets": [
            target("a killed-and-resumed run sends each request once", "every request uploaded once, one batch", if once { 1.0 } else { 0.0 }, once),
        ],
    }))
}
