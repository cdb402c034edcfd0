//! `cargo xtask bench flag`: the disagreement filter against cleanlab, for speed (1M x 100
//! probabilities) and for quality (Banking77 with planted noise, out-of-sample probabilities).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use relabel_tasks::data::Dataset;
use relabel_tasks::predictions::SplitPredictions;
use serde_json::{json, Value};

use crate::bench::json_output;
use crate::bench_train::banking77;
use crate::{home_cache, run};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn cleanlab_python() -> Result<PathBuf> {
    Ok(crate::bench::bench_venv("cleanlab", &["cleanlab==2.9.0"])?.join("bin/python"))
}

fn write_arrays(dir: &Path, p: &SplitPredictions) -> Result<()> {
    let probs: Vec<u8> = p.probs.iter().flat_map(|x| x.to_le_bytes()).collect();
    let labels: Vec<u8> = p
        .label
        .iter()
        .flat_map(|&x| (x as i64).to_le_bytes())
        .collect();
    std::fs::write(dir.join("probs.f32"), probs)?;
    std::fs::write(dir.join("labels.i64"), labels)?;
    Ok(())
}

/// `{name: [flagged train rows]}` for each filter config, from the release-built filter.
fn rank(
    (predictions, dataset): (&Path, &Path),
    configs: &BTreeMap<String, String>,
    work: &Path,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let file = work.join("rank-configs.json");
    std::fs::write(&file, serde_json::to_vec(configs)?)?;
    let v = flag_speed(&[
        "rank".as_ref(),
        predictions.as_os_str(),
        dataset.as_os_str(),
        file.as_os_str(),
    ])?;
    Ok(serde_json::from_value(v)?)
}

/// Runs the release-built `flag_speed` example (xtask itself is a debug build and links no node
/// kinds) with `args`; returns the JSON it prints.
fn flag_speed(args: &[&std::ffi::OsStr]) -> Result<Value> {
    json_output(
        Command::new("cargo")
            .args(["run", "--release", "--quiet", "-p", "relabel-plugins"])
            .args(["--example", "flag_speed", "--"])
            .args(args),
        "flag_speed",
    )
}

const CLEANLAB_SPEED: &str = r#"
import json, sys, time, numpy as np
from cleanlab.filter import find_label_issues
d, n, c, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
probs = np.fromfile(d + '/probs.f32', dtype='<f4').reshape(n, c); labels = np.fromfile(d + '/labels.i64', dtype='<i8')
out = {}
for f in ['prune_by_noise_rate', 'prune_by_class']:
    times = []
    for _ in range(reps):
        t0 = time.time(); m = find_label_issues(labels, probs, filter_by=f, n_jobs=2); times.append(time.time() - t0)
    np.save(d + '/cleanlab_' + f + '.npy', np.flatnonzero(m))
    out[f] = {'seconds': sorted(times)[len(times) // 2], 'issues': int(m.sum())}
import cleanlab; out['version'] = cleanlab.__version__
print(json.dumps(out))
"#;

fn speed(work: &Path, n: usize, c: usize) -> Result<Value> {
    let (n_arg, c_arg) = (n.to_string(), c.to_string());
    let ours = flag_speed(&[work.as_os_str(), n_arg.as_ref(), c_arg.as_ref()])?;
    let py = cleanlab_python()?;
    let theirs = json_output(
        Command::new(&py)
            .args(["-c", CLEANLAB_SPEED])
            .arg(work)
            .arg(n.to_string())
            .arg(c.to_string())
            .arg("1"),
        "cleanlab",
    )?;
    let mut figures =
        json!({"rows": n, "classes": c, "cleanlab_version": theirs["version"], "threads": 2});
    for name in ["prune_by_noise_rate", "prune_by_class"] {
        let ours_rows: HashSet<usize> = std::fs::read(work.join(format!("relabel_{name}.u32")))?
            .chunks(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .collect();
        let npy = std::fs::read(work.join(format!("cleanlab_{name}.npy")))?;
        let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize + 10;
        let theirs_rows: HashSet<usize> = npy[header_len..]
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .collect();
        let inter = ours_rows.intersection(&theirs_rows).count();
        let union = ours_rows.union(&theirs_rows).count();
        let (secs, t) = (
            ours[name]["seconds"].as_f64().unwrap_or(f64::NAN),
            theirs[name]["seconds"].as_f64().unwrap_or(f64::NAN),
        );
        println!("{name}: relabel {secs:.3} s ({} issues), cleanlab {t:.2} s ({} issues): {:.1}x, Jaccard {:.4}", ours_rows.len(), theirs_rows.len(), t / secs, inter as f64 / union.max(1) as f64);
        figures[name] = json!({
            "relabel_seconds": secs,
            "cleanlab_seconds": t,
            "speedup": t / secs,
            "relabel_issues": ours_rows.len(),
            "cleanlab_issues": theirs_rows.len(),
            "jaccard": inter as f64 / union.max(1) as f64,
        });
    }
    Ok(figures)
}

/// Precision, recall and F1 of `flagged` rows against the planted `noisy` ones.
fn prf(flagged: &[usize], noisy: &HashSet<usize>) -> Value {
    let tp = flagged.iter().filter(|r| noisy.contains(r)).count() as f64;
    let p = if flagged.is_empty() {
        0.0
    } else {
        tp / flagged.len() as f64
    };
    let r = tp / noisy.len().max(1) as f64;
    let f = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    json!({"precision": p, "recall": r, "f1": f, "flagged": flagged.len()})
}

const CLEANLAB_RANKED: &str = r#"
import json, sys, numpy as np
from cleanlab.filter import find_label_issues
d, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
probs = np.fromfile(d + '/probs.f32', dtype='<f4').reshape(n, c); labels = np.fromfile(d + '/labels.i64', dtype='<i8')
out = {}
for f in ['prune_by_noise_rate', 'prune_by_class', 'both']:
    out[f] = [int(i) for i in find_label_issues(labels, probs, filter_by=f, return_indices_ranked_by='self_confidence', n_jobs=2)]
print(json.dumps(out))
"#;

/// Runs `manifest` in `dir` with the release-built relabel on the bench's cache; returns the report.
fn run_manifest(root: &Path, dir: &Path, manifest: &str) -> Result<Value> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("pipeline.yaml"), manifest)?;
    let report = dir.join("report.json");
    run(Command::new(root.join("target/release/relabel"))
        .args(["run", "pipeline.yaml", "--report"])
        .arg(&report)
        .arg("--cache")
        .arg(home_cache().join("bench/flag-cache"))
        .current_dir(dir)
        .env("RELABEL_LOG", "warn")
        .stdout(std::process::Stdio::null()))?;
    Ok(serde_json::from_slice(&std::fs::read(&report)?)?)
}

/// Banking77's train and dev splits as the `dataset` node reads them (run by the relabel binary).
fn read_banking77(root: &Path, dir: &Path, b77: &Path) -> Result<Dataset> {
    let manifest = format!(
        "version: 1\nname: bench-flag-data\nnodes:\n  - id: data\n    kind: dataset\n    config: {{train: {0}/train.tsv, dev: {0}/dev.tsv}}\n",
        b77.display()
    );
    let r = run_manifest(root, dir, &manifest)?;
    let path = r["nodes"][0]["outputs"]["dataset"]["path"]
        .as_str()
        .context("no dataset path in the report")?;
    Ok(Dataset::read(Path::new(path))?)
}

/// Runs dataset -> trainer -> self_predictor (k-fold) on a train file; returns the train
/// predictions, their file and the dataset's folder.
fn kfold_predictions(
    root: &Path,
    dir: &Path,
    train: &Path,
    b77: &Path,
) -> Result<(SplitPredictions, PathBuf, PathBuf)> {
    let manifest = format!(
        "version: 1\nname: bench-flag\nnodes:\n  - id: data\n    kind: dataset\n    config: {{train: {}, dev: {1}/dev.tsv, test: {1}/test.tsv}}\n  - id: train\n    kind: trainer\n    inputs: [data.dataset]\n    config: {{epochs: 40, patience: 4, seed: 1, threads: 2}}\n  - id: predict\n    kind: self_predictor\n    inputs: {{model: train.model, dataset: data.dataset}}\n    config: {{kfold: 5, seed: 1}}\n",
        train.display(),
        b77.display()
    );
    let r = run_manifest(root, dir, &manifest)?;
    let node = r["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == "predict"))
        .context("no predict node in the report")?;
    let path = PathBuf::from(
        node["outputs"]["predictions"]["path"]
            .as_str()
            .context("no predictions path")?,
    );
    let data = r["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == "data"))
        .and_then(|n| n["outputs"]["dataset"]["path"].as_str())
        .map(PathBuf::from)
        .context("no dataset path in the report")?;
    let ds = Dataset::read(&data)?;
    let file = path.join("train.parquet");
    let p = SplitPredictions::read(&file, &ds.splits["train"], ds.labels.len())?;
    Ok((p, file, data))
}

fn write_jsonl(path: &Path, texts: &[String], labels: &[String]) -> Result<()> {
    let mut s = String::new();
    for (i, (t, l)) in texts.iter().zip(labels).enumerate() {
        s.push_str(&serde_json::to_string(
            &json!({"id": format!("r{i}"), "text": t, "label": l}),
        )?);
        s.push('\n');
    }
    std::fs::write(path, s)?;
    Ok(())
}

fn quality(root: &Path, work: &Path) -> Result<Value> {
    let b77 = banking77()?;
    let ds = read_banking77(root, &work.join("b77"), &b77)?;
    let train = ds.split("train").context("train")?;
    let names: Vec<String> = ds.labels.names().iter().map(|s| s.to_string()).collect();
    let c = names.len();
    let clean: Vec<String> = train
        .labels
        .iter()
        .map(|&l| names[l as usize].clone())
        .collect();
    // The clean model's confusions: for each class, the other class its rows are most often predicted as.
    write_jsonl(&work.join("clean.jsonl"), &train.texts, &clean)?;
    let (cp, _, _) = kfold_predictions(root, &work.join("clean"), &work.join("clean.jsonl"), &b77)?;
    let mut confusion = vec![vec![0usize; c]; c];
    for i in 0..cp.rows() {
        confusion[cp.label[i] as usize][cp.predicted[i] as usize] += 1;
    }
    let confusable: Vec<usize> = (0..c)
        .map(|i| {
            (0..c)
                .filter(|&j| j != i)
                .max_by_key(|&j| (confusion[i][j], usize::MAX - j))
                .expect("c > 1")
        })
        .collect();
    let py = cleanlab_python()?;
    let mut out = json!({"rows": train.len(), "clean_oos_accuracy": cp.accuracy()});
    for kind in ["uniform", "confusable"] {
        let mut rng = Rng(if kind == "uniform" { 11 } else { 12 });
        let mut labels = clean.clone();
        let mut noisy = HashSet::new();
        for (i, label) in labels.iter_mut().enumerate() {
            if rng.unit() < 0.2 {
                let l = train.labels[i] as usize;
                let new = if kind == "uniform" {
                    (l + 1 + (rng.next() % (c as u64 - 1)) as usize) % c
                } else {
                    confusable[l]
                };
                *label = names[new].clone();
                noisy.insert(i);
            }
        }
        let file = work.join(format!("{kind}.jsonl"));
        write_jsonl(&file, &train.texts, &labels)?;
        let (p, p_path, data_path) = kfold_predictions(root, &work.join(kind), &file, &b77)?;
        let dir = work.join(format!("{kind}-arrays"));
        std::fs::create_dir_all(&dir)?;
        write_arrays(&dir, &p)?;
        let ranked: BTreeMap<String, Vec<usize>> = serde_json::from_value(json_output(
            Command::new(&py)
                .args(["-c", CLEANLAB_RANKED])
                .arg(&dir)
                .arg(p.rows().to_string())
                .arg(c.to_string()),
            "cleanlab",
        )?)?;
        let rules = [
            ("pred_neq_label", "[pred_neq_label]", "self_confidence"),
            (
                "pred_neq_label (margin rank)",
                "[pred_neq_label]",
                "normalized_margin",
            ),
            (
                "self_confidence_below 0.5",
                "[{self_confidence_below: 0.5}]",
                "self_confidence",
            ),
            (
                "margin_below 0",
                "[{margin_below: 0.0}]",
                "normalized_margin",
            ),
            (
                "cl prune_by_noise_rate",
                "[{confident_learning: prune_by_noise_rate}]",
                "self_confidence",
            ),
            (
                "cl prune_by_class",
                "[{confident_learning: prune_by_class}]",
                "self_confidence",
            ),
            ("cl both", "[{confident_learning: both}]", "self_confidence"),
        ];
        let budgets = [0.05, 0.10, 0.20];
        let mut configs = BTreeMap::new();
        for budget in budgets {
            for (name, rules, rank) in rules {
                configs.insert(
                    format!("{budget} {name}"),
                    format!("rules: {rules}\nrank_by: {rank}\nmax_fraction: {budget}\nsplits: [train]\n"),
                );
            }
        }
        let flagged_by = rank((&p_path, &data_path), &configs, work)?;
        let mut table = serde_json::Map::new();
        for budget in budgets {
            let mut row = serde_json::Map::new();
            for (name, _, _) in rules {
                let flagged = &flagged_by[&format!("{budget} {name}")];
                row.insert(format!("relabel {name}"), prf(flagged, &noisy));
            }
            let k = (budget * p.rows() as f64).floor() as usize;
            for (f, idx) in &ranked {
                let top: Vec<usize> = idx.iter().take(k).copied().collect();
                row.insert(format!("cleanlab {f}"), prf(&top, &noisy));
            }
            let best = |prefix: &str| {
                row.iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, v)| v["f1"].as_f64().unwrap_or(0.0))
                    .fold(0.0, f64::max)
            };
            let (ours, theirs) = (best("relabel"), best("cleanlab"));
            println!(
                "{kind} 20%, budget {:.0}%: best F1 relabel {ours:.3}, cleanlab {theirs:.3}",
                budget * 100.0
            );
            row.insert("best_f1_relabel".into(), json!(ours));
            row.insert("best_f1_cleanlab".into(), json!(theirs));
            table.insert(format!("budget_{:.0}%", budget * 100.0), Value::Object(row));
        }
        out[kind] = json!({"noise_rate": noisy.len() as f64 / train.len() as f64, "noisy_oos_accuracy": p.accuracy(), "results": table});
    }
    Ok(out)
}

pub fn flag(root: &Path, args: &[String]) -> Result<Value> {
    let n: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    crate::relabel_bin(root)?;
    let work = root.join("target/bench-flag");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let speed = speed(&work.join("speed"), n, 100)?;
    let _ = std::fs::remove_dir_all(work.join("speed"));
    let quality = quality(root, &work)?;
    let mut targets = Vec::new();
    for name in ["prune_by_noise_rate", "prune_by_class"] {
        let x = speed[name]["speedup"].as_f64().unwrap_or(f64::NAN);
        let j = speed[name]["jaccard"].as_f64().unwrap_or(f64::NAN);
        targets.push(crate::bench::target(
            &format!("{name}: times faster than cleanlab"),
            ">= 20",
            x,
            x >= 20.0,
        ));
        targets.push(crate::bench::target(
            &format!("{name}: same rows flagged (Jaccard)"),
            ">= 0.99",
            j,
            j >= 0.99,
        ));
    }
    Ok(json!({"speed": speed, "quality": quality, "target_speedup": 20.0, "targets": targets}))
}
