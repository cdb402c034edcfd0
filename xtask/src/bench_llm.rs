//! `cargo xtask bench llm`: binary-relabel throughput against a scripted server that answers
//! after a fixed delay (200 ms), with `max_concurrency` 64 and 5,000 flagged rows; memory is
//! sampled through the run. Peer: the official `openai` Python client (AsyncOpenAI, 64 at once)
//! against the same server, in the same run.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relabel_testkit::{chat_completion, offered, Reply, Server};
use serde_json::{json, Value};

use crate::bench::json_output;

pub(crate) const ROWS: usize = 5000;
const DELAY_MS: u64 = 200;
const CONCURRENCY: usize = 64;
const LABELS: [&str; 4] = ["billing", "shipping", "refund", "account"];

/// The bench's project: ROWS flagged rows, and a pipeline judging them with the endpoint
/// `scripted` given as a YAML flow mapping.
pub(crate) fn write_project(dir: &Path, endpoint: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut train = String::new();
    let mut flags = String::new();
    for i in 0..ROWS {
        let (l, c) = (LABELS[i % 4], LABELS[(i + 1) % 4]);
        let text = format!("customer message number {i} about {c} and perhaps {l}");
        train.push_str(&json!({"id": format!("r{i}"), "text": text, "label": l}).to_string());
        train.push('\n');
        flags.push_str(
            &json!({"split": "train", "row": i, "id": format!("r{i}"), "text": text,
            "label": l, "candidate": c, "label_prob": 0.2, "candidate_prob": 0.7, "score": 0.5,
            "rule": "pred_neq_label"})
            .to_string(),
        );
        flags.push('\n');
    }
    std::fs::write(dir.join("train.jsonl"), train)?;
    std::fs::write(
        dir.join("dev.jsonl"),
        LABELS
            .iter()
            .map(|l| {
                json!({"id": format!("d-{l}"), "text": format!("about {l}"), "label": l})
                    .to_string()
                    + "\n"
            })
            .collect::<String>(),
    )?;
    std::fs::write(dir.join("flags.jsonl"), flags)?;
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            r#"version: 1
name: bench_llm
llm:
  scripted: {endpoint}
nodes:
  - id: data
    kind: dataset
    config: {{train: train.jsonl, dev: dev.jsonl, id_column: id}}
  - id: flags
    kind: command
    config: {{run: "cp flags.jsonl ${{outputs.flags}}", files: [flags.jsonl], outputs: [flags]}}
  - id: relabel
    kind: binary_relabeler
    inputs: {{flags: flags.flags, dataset: data.dataset}}
    config: {{examples: 1}}
"#
        ),
    )?;
    Ok(())
}

/// A run: wall seconds, the relabel node's report entry, and (seconds, RSS kB) samples.
pub(crate) struct Sampled {
    pub wall: f64,
    pub node: Value,
    pub samples: Vec<(f64, u64)>,
    pub code: i32,
}

/// Runs the pipeline, sampling the process's resident memory every 50 ms; a failed run is an
/// error (a pending one, exit 3, is not).
pub(crate) fn run_sampled(bin: &Path, dir: &Path, cache: &Path, force: bool) -> Result<Sampled> {
    let report = dir.join("report.json");
    let mut cmd = Command::new(bin);
    cmd.args(["run", "p.yaml", "--cache"])
        .arg(cache)
        .arg("--report")
        .arg(&report)
        .current_dir(dir)
        .env("RELABEL_LOG", "warn");
    if force {
        cmd.args(["--force", "relabel"]);
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let mut samples = Vec::new();
    let code = loop {
        if let Some(status) = child.try_wait()? {
            let code = status.code().unwrap_or(-1);
            if code != 0 && code != 3 {
                bail!("relabel run failed: {status}");
            }
            break code;
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                samples.push((t0.elapsed().as_secs_f64(), kb));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = t0.elapsed().as_secs_f64();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    let node = r["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["instance"] == "relabel"))
        .cloned()
        .context("no relabel node in the report")?;
    Ok(Sampled {
        wall,
        node,
        samples,
        code,
    })
}

const PEER: &str = r#"
import asyncio, json, sys, time
from openai import AsyncOpenAI
base, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = AsyncOpenAI(base_url=base, api_key="none", max_retries=0, timeout=30)
labels = ["billing", "shipping", "refund", "account"]
async def one(i, sem):
    async with sem:
        l, c = labels[i % 4], labels[(i + 1) % 4]
        r = await client.chat.completions.create(model="scripted", temperature=0, max_tokens=64,
            messages=[{"role": "user", "content": f"customer message number {i}: {l} or {c}?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "binary_choice", "strict": True,
                "schema": {"type": "object", "properties": {"label": {"type": "string", "enum": [l, c]}},
                           "required": ["label"], "additionalProperties": False}}})
        return json.loads(r.choices[0].message.content)["label"] in (l, c)
async def main():
    sem = asyncio.Semaphore(conc)
    t0 = time.perf_counter()
    ok = await asyncio.gather(*[one(i, sem) for i in range(n)])
    return time.perf_counter() - t0, sum(ok)
import resource
secs, ok = asyncio.run(main())
print(json.dumps({"seconds": secs, "ok": ok, "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"#;

pub fn llm(root: &Path, _args: &[String]) -> Result<Value> {
    let bin = crate::relabel_bin(root)?;
    let server = Server::start(Arc::new(|req| {
        let body = req.json().unwrap_or(Value::Null);
        let pair = offered(&body);
        let answer = pair.get(1).or(pair.first()).cloned().unwrap_or_default();
        Reply::ok(chat_completion(&json!({"label": answer}).to_string()))
            .delayed(Duration::from_millis(DELAY_MS))
    }))?;
    let work = crate::home_cache().join("bench/llm");
    let _ = std::fs::remove_dir_all(&work);
    write_project(
        &work,
        &format!(
            "{{base_url: \"{}\", model: scripted, max_concurrency: {CONCURRENCY}, timeout: 30, max_retries: 0}}",
            server.base_url()
        ),
    )?;
    let cache = work.join("cache");
    let ideal = CONCURRENCY as f64 / (DELAY_MS as f64 / 1000.0);

    let sent0 = server.count();
    let Sampled {
        wall,
        node,
        samples,
        ..
    } = run_sampled(&bin, &work, &cache, false)?;
    let sent = server.count() - sent0;
    let secs = node["seconds"].as_f64().unwrap_or(wall);
    let throughput = ROWS as f64 / secs;
    let m = &node["metrics"];
    if m["rows"] != ROWS || m["undecided"] != 0 {
        bail!("the bench run did not decide every row: {m}");
    }
    // Memory: resident set over the relabel node's run (first vs last quarter of samples).
    let q = samples.len() / 4;
    let peak = |s: &[(f64, u64)]| s.iter().map(|x| x.1).max().unwrap_or(0);
    let (early, late) = (
        peak(&samples[q..2 * q.max(1)]),
        peak(&samples[samples.len() - q.max(1)..]),
    );
    println!(
        "relabel: {ROWS} rows in {secs:.2} s = {throughput:.1} req/s ({:.1}% of ideal {ideal:.0}); {sent} requests; RSS {} -> {} MB",
        100.0 * throughput / ideal,
        early / 1024,
        late / 1024
    );

    // The same rows again, forced: every answer comes from the LLM cache.
    let sent1 = server.count();
    let cached_node = run_sampled(&bin, &work, &cache, true)?.node;
    let cached_secs = cached_node["seconds"].as_f64().unwrap_or(0.0);
    let resent = server.count() - sent1;
    println!("relabel, rerun from the LLM cache: {cached_secs:.2} s, {resent} requests sent");

    let py = crate::bench::bench_venv("openai", &["openai==3.51.0"])?.join("bin/python");
    let peer = json_output(
        Command::new(py)
            .arg("-c")
            .arg(PEER)
            .arg(server.base_url())
            .arg(ROWS.to_string())
            .arg(CONCURRENCY.to_string()),
        "the openai peer",
    )?;
    let peer_secs = peer["seconds"].as_f64().unwrap_or(f64::NAN);
    println!(
        "openai (Python, AsyncOpenAI, semaphore {CONCURRENCY}): {ROWS} rows in {peer_secs:.2} s = {:.1} req/s; max RSS {} MB",
        ROWS as f64 / peer_secs,
        peer["max_rss_kb"].as_u64().unwrap_or(0) / 1024
    );
    Ok(json!({
        "rows": ROWS,
        "server_delay_ms": DELAY_MS,
        "max_concurrency": CONCURRENCY,
        "ideal_requests_per_s": ideal,
        "relabel": {
            "node_seconds": secs,
            "wall_seconds": wall,
            "requests_per_s": throughput,
            "fraction_of_ideal": throughput / ideal,
            "http_requests": sent,
            "rss_kb_early_peak": early,
            "rss_kb_late_peak": late,
            "rss_samples": samples.len(),
            "tokens": {"prompt": m["prompt_tokens"], "completion": m["completion_tokens"]},
        },
        "relabel_rerun_from_cache": {"node_seconds": cached_secs, "http_requests": resent},
        "openai_python": {
            "seconds": peer_secs,
            "requests_per_s": ROWS as f64 / peer_secs,
            "fraction_of_ideal": ROWS as f64 / peer_secs / ideal,
            "max_rss_kb": peer["max_rss_kb"],
        },
        "target": ">= 90% of the ideal throughput, memory flat",
        "targets": [
            crate::bench::target("throughput (fraction of the ideal)", ">= 0.90", throughput / ideal, throughput / ideal >= 0.90),
            crate::bench::target("requests on a rerun", "0", resent as f64, resent == 0),
        ],
    }))
}
