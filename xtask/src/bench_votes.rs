//! `cargo xtask bench votes`: majority vote vs Dawid-Skene on the real annotator matrix of
//! Rzhetsky et al. (2009) as shipped in pyanno 2.0.2 (`data/e-2.txt`: 15,521 items x 8
//! annotators, -1 = no vote): agreement statistics and time, with a numpy Dawid-Skene (same
//! EM, same start) as the peer in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use relabel_tasks::data::Dataset;
use serde_json::{json, Value};

use crate::bench::json_output;

fn pyanno_votes() -> Result<PathBuf> {
    let dir = crate::home_cache().join("data/pyanno");
    let file = dir.join("e-2.txt");
    if file.exists() {
        return Ok(file);
    }
    std::fs::create_dir_all(&dir)?;
    let dl = dir.join("dl");
    // pyanno ships only as a source package.
    crate::pip_download(&dl, &["--no-binary", ":all:"], &["pyanno==2.0.2"])?;
    crate::run(
        Command::new("tar")
            .arg("xzf")
            .arg(dl.join("pyanno-2.0.2.tar.gz"))
            .arg("-C")
            .arg(&dl)
            .arg("pyanno-2.0.2/data/e-2.txt"),
    )?;
    std::fs::rename(dl.join("pyanno-2.0.2/data/e-2.txt"), &file)?;
    std::fs::remove_dir_all(&dl)?;
    Ok(file)
}

const NUMPY_DS: &str = r#"
import json, sys, time, numpy as np
votes = np.loadtxt(sys.argv[1], delimiter=',', usecols=range(8), dtype=np.int64)
t0 = time.perf_counter()
labels = np.unique(votes[votes >= 0]); k = len(labels); n, m = votes.shape
idx = np.searchsorted(labels, np.where(votes >= 0, votes, labels[0]))
present = votes >= 0
counts = np.zeros((n, m, k)); counts[np.arange(n)[:, None], np.arange(m)[None, :], idx] = present
post = counts.sum(1); s = post.sum(1, keepdims=True); post = np.where(s > 0, post / np.maximum(s, 1), 1.0 / k)
for it in range(int(sys.argv[2])):
    prior = post.sum(0) + 0.01; prior /= prior.sum()
    conf = np.einsum('ic,iml->mcl', post, counts) + 0.01; conf /= conf.sum(2, keepdims=True)
    lp = np.log(prior)[None, :] + np.einsum('iml,mcl->ic', counts, np.log(conf))
    lp -= lp.max(1, keepdims=True); new = np.exp(lp); new /= new.sum(1, keepdims=True)
    moved = np.abs(new - post).max(); post = new
    if moved < 1e-6: break
secs = time.perf_counter() - t0
acc = [float((prior * np.diag(conf[a])).sum()) for a in range(m)]
np.save(sys.argv[3], labels[post.argmax(1)])
print(json.dumps({"seconds": secs, "iterations": it + 1, "annotator_accuracy": acc}))
"#;

fn run_votes(bin: &Path, work: &Path, method: &str) -> Result<(Value, Dataset)> {
    let dir = work.join(method);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "version: 1\nname: votes_{method}\nnodes:\n  - id: votes\n    kind: votes\n    config: {{file: {}, format: wide, no_header: true, method: {method}, max_iterations: 100}}\n",
            pyanno_votes()?.display()
        ),
    )?;
    let report = dir.join("report.json");
    crate::run(
        Command::new(bin)
            .args(["run", "p.yaml", "--cache", "cache", "--report"])
            .arg(&report)
            .current_dir(&dir)
            .env("RELABEL_LOG", "warn"),
    )?;
    let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let node = r["nodes"][0].clone();
    let ds = Dataset::read(Path::new(
        node["outputs"]["dataset"]["path"]
            .as_str()
            .context("dataset path")?,
    ))?;
    Ok((node["metrics"].clone(), ds))
}

pub fn votes(root: &Path, _args: &[String]) -> Result<Value> {
    let bin = crate::relabel_bin(root)?;
    let work = crate::home_cache().join("bench/votes");
    let _ = std::fs::remove_dir_all(&work);
    let (maj_m, maj) = run_votes(&bin, &work, "majority")?;
    let (ds_m, ds) = run_votes(&bin, &work, "dawid_skene")?;
    let (a, b) = (&maj.splits["train"], &ds.splits["train"]);
    let name = |d: &Dataset, l: u32| d.labels.labels[l as usize].name.clone();
    let same = (0..a.len())
        .filter(|&i| name(&maj, a.labels[i]) == name(&ds, b.labels[i]))
        .count();
    let py = crate::bench::bench_venv("numpy", &["numpy==2.4.6"])?.join("bin/python");
    let npy = work.join("numpy_ds.npy");
    let peer = json_output(
        Command::new(&py)
            .arg("-c")
            .arg(NUMPY_DS)
            .arg(pyanno_votes()?)
            .arg("100")
            .arg(&npy)
            .env("OPENBLAS_NUM_THREADS", "2"),
        "numpy Dawid-Skene",
    )?;
    let bytes = std::fs::read(&npy)?;
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize + 10;
    let peer_labels: Vec<i64> = bytes[header..]
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
        .collect();
    let same_peer = (0..b.len())
        .filter(|&i| name(&ds, b.labels[i]) == peer_labels[i].to_string())
        .count();
    let n = a.len() as f64;
    println!(
        "majority vs Dawid-Skene: same label on {same} of {} items ({:.1}%); Dawid-Skene {:.3} s ({} iterations) vs numpy {:.3} s ({} iterations); same label as numpy on {same_peer}",
        a.len(),
        100.0 * same as f64 / n,
        ds_m["seconds"].as_f64().unwrap_or(f64::NAN),
        ds_m["iterations"],
        peer["seconds"].as_f64().unwrap_or(f64::NAN),
        peer["iterations"]
    );
    Ok(json!({
        "items": a.len(),
        "majority": maj_m,
        "dawid_skene": ds_m,
        "same_label_majority_vs_dawid_skene": same,
        "numpy_dawid_skene": peer,
        "same_label_as_numpy": same_peer,
    }))
}
