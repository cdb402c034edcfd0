//! `cargo xtask bench quality`: does relabelling really help? Banking77 with planted train-label
//! noise (10/20/30%, uniform or confusable), cleaned in rounds by manifests/bench/quality.yaml
//! with a simulated judge of known accuracy p (a scripted server, for measurement only), the real
//! local Qwen2.5 0.5B on a subset, and the judge-free baselines (flip to the prediction, drop the
//! flagged rows); every figure is scored against the planted truth and the untouched test split.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relabel_tasks::data::Dataset;

pub(crate) use crate::report::{metric, output, read_jsonl};
use relabel_testkit::{Annotator, Server};
use serde_json::{json, Value};

/// The simulated judge's port: fixed, so its endpoint (and the relabeler's cache keys) stay the
/// same from one benchmark run to the next.
const SIM_PORT: u16 = 18077;

/// One benchmark setting: a noise and a way of fixing flagged rows.
struct Setting {
    kind: &'static str,
    noise: f64,
    /// `flip`, `drop`, `sim-pP` or `qwen`.
    method: String,
    rounds: usize,
    relabel_rows: usize,
    /// The flag budget per round, when not the manifest's 10%.
    flag_fraction: Option<f64>,
    /// Leave already-judged pairs out of later rounds' flags (the filter's `skip_judged`).
    skip_judged: bool,
}

impl Setting {
    fn name(&self) -> String {
        let budget = self
            .flag_fraction
            .map(|f| format!("-flag{}", (100.0 * f).round()))
            .unwrap_or_default();
        let skip = if self.skip_judged { "-skipjudged" } else { "" };
        format!("{}-{}-{}{budget}{skip}", self.kind, self.noise, self.method)
    }

    fn sets(&self) -> Vec<String> {
        let mut s = vec![
            format!("noise={}", self.noise),
            format!("noise_kind={}", self.kind),
            format!("rounds={}", self.rounds),
        ];
        if let Some(f) = self.flag_fraction {
            s.push(format!("flag_fraction={f}"));
        }
        if self.skip_judged {
            s.push("skip_judged=true".into());
        }
        match self.method.as_str() {
            "flip" | "drop" => {
                s.push(format!("action={}", self.method));
                s.push("relabel_rows=0".into());
            }
            "qwen" => {
                s.push("judge=local".into());
                s.push(format!("relabel_rows={}", self.relabel_rows));
            }
            sim => {
                s.push(format!("judge_model={sim}"));
                s.push(format!("judge_url=http://127.0.0.1:{SIM_PORT}/v1"));
            }
        }
        s
    }
}

/// The planted truth by row id: the rows of the `source` node (noise 0, so every label is the
/// truth), run alone first. Every setting's noisy rows have the same ids, because
/// inject_noise.py shuffles the rows before it draws any noise.
fn truth_by_id(
    bin: &Path,
    work: &Path,
    cache: &Path,
    data: &Path,
) -> Result<HashMap<String, String>> {
    let report = work.join("reports/source.json");
    let status = Command::new(bin)
        .args([
            "run",
            "manifests/bench/quality.yaml",
            "--target",
            "source",
            "--report",
        ])
        .arg(&report)
        .arg("--cache")
        .arg(cache)
        .env("RELABEL_BANKING77", data)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("the source node failed; see its log in {}", cache.display());
    }
    let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let rows = read_jsonl(&output(&r, "source", "data")?.join("train.jsonl"))?;
    Ok(rows
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap_or("").to_string(),
                x["true_label"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// Train rows whose label equals the planted truth, and the rows there are.
pub(crate) fn label_accuracy(ds: &Dataset, truth: &HashMap<String, String>) -> (f64, usize) {
    let t = &ds.splits["train"];
    let right = t
        .ids
        .iter()
        .zip(&t.labels)
        .filter(|(id, l)| {
            truth.get(*id).map(String::as_str) == Some(ds.labels.names()[**l as usize])
        })
        .count();
    (right as f64 / t.len().max(1) as f64, t.len())
}

/// Scores one run against the planted truth: per round, flag precision/recall, train-label
/// accuracy after the round, fixed-test accuracy of the model trained after it, judge accuracy,
/// requests and tokens. Every figure comes from the run's artifacts and metrics.
fn score(r: &Value, rounds: usize) -> Result<Value> {
    let noisy = output(r, "noisy", "data")?;
    let mut truth = HashMap::new();
    for row in read_jsonl(&noisy.join("train.jsonl"))? {
        truth.insert(
            row["id"].as_str().unwrap_or("").to_string(),
            row["true_label"].as_str().unwrap_or("").to_string(),
        );
    }
    let start = Dataset::read(&output(r, "data", "dataset")?)?;
    let (acc0, rows0) = label_accuracy(&start, &truth);
    let mut per_round = Vec::new();
    let mut current = start;
    for k in 1..=rounds {
        let flags = read_jsonl(&output(r, &format!("flag@{k}"), "flags")?)?;
        let noisy_rows = {
            let t = &current.splits["train"];
            let names = current.labels.names();
            t.ids
                .iter()
                .zip(&t.labels)
                .filter(|(id, l)| truth.get(*id).map(String::as_str) != Some(names[**l as usize]))
                .count()
        };
        // Whether a flag's or decision's `field` holds its row's true label.
        let is_truth = |v: &Value, field: &str| {
            v[field].is_string()
                && truth
                    .get(v["id"].as_str().unwrap_or(""))
                    .map(String::as_str)
                    == v[field].as_str()
        };
        let wrong_flagged = flags.iter().filter(|f| !is_truth(f, "label")).count();
        let fixable = flags.iter().filter(|f| is_truth(f, "candidate")).count();
        let decisions = read_jsonl(&output(r, &format!("relabel@{k}"), "decisions")?)?;
        let decided: Vec<&Value> = decisions
            .iter()
            .filter(|d| d["chosen"].is_string())
            .collect();
        let judge_right = decided.iter().filter(|d| is_truth(d, "chosen")).count();
        // The judge can only be right where the truth is one of the two candidates.
        let answerable: Vec<&&Value> = decided
            .iter()
            .filter(|d| is_truth(d, "label") || is_truth(d, "candidate"))
            .collect();
        let answerable_right = answerable.iter().filter(|d| is_truth(d, "chosen")).count();
        let next = Dataset::read(&output(r, &format!("apply@{k}"), "dataset")?)?;
        let (acc, rows) = label_accuracy(&next, &truth);
        let test_after = if k < rounds {
            metric(r, &format!("evaluate@{}", k + 1), "test_accuracy")
        } else {
            metric(r, "final_evaluate", "test_accuracy")
        };
        let rel = format!("relabel@{k}");
        per_round.push(json!({
            "round": k,
            "flagged": flags.len(),
            "flag_precision": wrong_flagged as f64 / flags.len().max(1) as f64,
            "flag_recall": wrong_flagged as f64 / noisy_rows.max(1) as f64,
            "candidate_is_truth": fixable as f64 / flags.len().max(1) as f64,
            "judged": decisions.len(),
            "judge_accuracy": if decided.is_empty() { Value::Null } else { json!(judge_right as f64 / decided.len() as f64) },
            "judge_accuracy_where_truth_offered": if answerable.is_empty() { Value::Null } else { json!(answerable_right as f64 / answerable.len() as f64) },
            "truth_offered": answerable.len(),
            "truth_offered_right": answerable_right,
            "undecided": decisions.len() - decided.len(),
            "changed": metric(r, &format!("apply@{k}"), "changed"),
            "train_label_accuracy": acc,
            "train_rows": rows,
            "test_accuracy": test_after,
            // HTTP requests this run sent; the rest of the questions were answered by the LLM
            // cache (a repeated question, or an earlier run's answer).
            "requests": metric(r, &rel, "http_requests"),
            "cache_hits": metric(r, &rel, "cache_hits"),
            "prompt_tokens": metric(r, &rel, "prompt_tokens"),
            "completion_tokens": metric(r, &rel, "completion_tokens"),
        }));
        current = next;
    }
    Ok(json!({
        "train_label_accuracy_before": acc0,
        "train_rows_before": rows0,
        "test_accuracy_before": metric(r, "evaluate@1", "test_accuracy"),
        "clean_test_accuracy": metric(r, "clean_evaluate", "test_accuracy"),
        "rounds": per_round,
    }))
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.1}", 100.0 * x))
        .unwrap_or("-".into())
}

pub fn quality(root: &Path, args: &[String]) -> Result<Value> {
    let quick = args.iter().any(|a| a == "--quick");
    let bin = crate::relabel_bin(root)?;
    let data = crate::bench_train::banking77()?;
    let latency_ms: u64 = std::env::var("RELABEL_SIM_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let work = root.join("target/bench-quality");
    std::fs::create_dir_all(work.join("reports"))?;
    let cache = work.join("cache");
    let truth = truth_by_id(&bin, &work, &cache, &data)?;
    let annotator = Annotator::new(truth, 2026, Duration::from_millis(latency_ms));
    let server = Server::start_on(SIM_PORT, annotator.handler())
        .with_context(|| format!("starting the simulated judge on port {SIM_PORT}"))?;
    let qwen_rows: usize = std::env::var("RELABEL_QUALITY_QWEN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);

    let mut settings = Vec::new();
    let (kinds, noises, sims): (&[&str], &[f64], &[f64]) = if quick {
        (&["uniform"], &[0.2], &[0.9])
    } else {
        (
            &["uniform", "confusable"],
            &[0.1, 0.2, 0.3],
            &[0.8, 0.9, 1.0],
        )
    };
    for &kind in kinds {
        for &noise in noises {
            let mut methods: Vec<String> = vec!["flip".into(), "drop".into()];
            methods.extend(sims.iter().map(|p| Annotator::model_name(*p)));
            for method in methods {
                settings.push(Setting {
                    kind,
                    noise,
                    method,
                    rounds: 3,
                    relabel_rows: 100_000,
                    flag_fraction: None,
                    skip_judged: false,
                });
            }
        }
    }
    // The target setting again with a flag budget matched to the noise (20% a round).
    settings.push(Setting {
        kind: "uniform",
        noise: 0.2,
        method: Annotator::model_name(0.9),
        rounds: 3,
        relabel_rows: 100_000,
        flag_fraction: Some(0.2),
        skip_judged: false,
    });
    // And leaving judged pairs out of later rounds' flags.
    for (noise, p) in [(0.1, 0.8), (0.1, 0.9), (0.2, 0.9), (0.2, 1.0)] {
        settings.push(Setting {
            kind: "uniform",
            noise,
            method: Annotator::model_name(p),
            rounds: 3,
            relabel_rows: 100_000,
            flag_fraction: None,
            skip_judged: true,
        });
    }
    settings.push(Setting {
        kind: "uniform",
        noise: 0.2,
        method: "qwen".into(),
        rounds: 1,
        relabel_rows: qwen_rows,
        flag_fraction: None,
        skip_judged: false,
    });

    let mut results = BTreeMap::new();
    let t_all = Instant::now();
    for s in &settings {
        let name = s.name();
        let report = work.join(format!("reports/{name}.json"));
        let log = std::fs::File::create(work.join(format!("reports/{name}.log")))?;
        let t = Instant::now();
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "manifests/bench/quality.yaml", "--report"])
            .arg(&report)
            .arg("--cache")
            .arg(&cache)
            .env("RELABEL_BANKING77", &data)
            .env("RELABEL_JUDGE_KEY", "simulated")
            .stdout(log.try_clone()?)
            .stderr(log);
        for set in s.sets() {
            cmd.args(["--set", &set]);
        }
        let status = cmd.status()?;
        if !status.success() {
            bail!(
                "{name}: relabel run failed; see {}",
                work.join(format!("reports/{name}.log")).display()
            );
        }
        let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
        let mut scored = score(&r, s.rounds).with_context(|| format!("scoring {name}"))?;
        scored["seconds"] = json!(t.elapsed().as_secs_f64());
        scored["nodes_ran"] = json!(r["nodes"]
            .as_array()
            .map(|ns| ns.iter().filter(|n| n["status"] == "ran").count())
            .unwrap_or(0));
        let last = &scored["rounds"][s.rounds - 1];
        eprintln!(
            "{name:<28} {:>5.0} s  label acc {} -> {}  test {} -> {}",
            t.elapsed().as_secs_f64(),
            pct(&scored["train_label_accuracy_before"]),
            pct(&last["train_label_accuracy"]),
            pct(&scored["test_accuracy_before"]),
            pct(&last["test_accuracy"]),
        );
        results.insert(name, scored);
    }
    // Training noise: the models trained on the clean labels and on the 20%-uniform noisy labels
    // (no relabelling), with five seeds each (the same data, the same config).
    let (mut clean_seeds, mut noisy_seeds) = (Vec::new(), Vec::new());
    for seed in 1..=5 {
        let report = work.join(format!("reports/seed{seed}.json"));
        crate::run(
            Command::new(&bin)
                .args([
                    "run",
                    "manifests/bench/quality.yaml",
                    "--target",
                    "final_train",
                ])
                .args(["--set", &format!("seed={seed}"), "--set", "rounds=1"])
                .args(["--set", "relabel_rows=0", "--set", "noise=0.2"])
                .args(["--set", "noise_kind=uniform", "--report"])
                .arg(&report)
                .arg("--cache")
                .arg(&cache)
                .env("RELABEL_BANKING77", &data)
                .env("RELABEL_JUDGE_KEY", "simulated")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )?;
        let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
        let acc = |n: &str| metric(&r, n, "test_accuracy").as_f64().unwrap_or(f64::NAN);
        clean_seeds.push(acc("clean_train"));
        noisy_seeds.push(acc("final_train"));
    }
    let spread = |xs: &[f64]| {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd =
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt();
        let (lo, hi) = xs
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        println!(
            "  test accuracy over seeds 1..5: {:.2}% +- {:.2} (sd), range {:.2}..{:.2}",
            100.0 * mean,
            100.0 * sd,
            100.0 * lo,
            100.0 * hi
        );
        json!({"test_accuracy": xs, "mean": mean, "sd": sd, "range_points": 100.0 * (hi - lo)})
    };
    println!("clean labels:");
    let clean_noise = spread(&clean_seeds);
    println!("20% uniform noise, no cleaning:");
    let noisy_noise = spread(&noisy_seeds);
    let seed_noise = json!({"clean": clean_noise, "uniform_20": noisy_noise});
    let unknown = annotator.unknown.load(std::sync::atomic::Ordering::Relaxed);
    let sim_requests = server.count();
    drop(server);

    let table = tables(&settings, &results);
    print!("{table}");
    let checks = targets(&results);
    println!("{}", serde_json::to_string_pretty(&checks)?);
    Ok(json!({
        "settings": results,
        "targets": checks,
        "training_noise": seed_noise,
        "table_markdown": table,
        "simulated_judge": {"latency_ms": latency_ms, "requests": sim_requests, "unknown_items": unknown},
        "seconds": t_all.elapsed().as_secs_f64(),
        "quick": quick,
    }))
}

/// One markdown table per noise setting: a row per method, label and test accuracy per round.
fn tables(settings: &[Setting], results: &BTreeMap<String, Value>) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for s in settings {
        let key = (s.kind, s.noise.to_string());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let group: Vec<&Setting> = settings
            .iter()
            .filter(|x| x.kind == s.kind && x.noise == s.noise)
            .collect();
        let first = &results[&group[0].name()];
        out.push_str(&format!(
            "\n{} noise {:.0}% (train labels {}% right; clean-trained test accuracy {}%)\n\n",
            s.kind,
            100.0 * s.noise,
            pct(&first["train_label_accuracy_before"]),
            pct(&first["clean_test_accuracy"]),
        ));
        out.push_str("| method | flag P / R (round 1) | judge acc. where truth offered: r1 / all rounds | train-label acc. %: before, r1, r2, r3 | fixed-test acc. %: before, r1, r2, r3 | train rows after | questions | tokens |\n|---|---|---:|---|---|---:|---:|---:|\n");
        for g in group {
            let r = &results[&g.name()];
            let rounds = r["rounds"].as_array().cloned().unwrap_or_default();
            let series = |key: &str, before: &Value| {
                std::iter::once(pct(before))
                    .chain(rounds.iter().map(|x| pct(&x[key])))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let sum = |key: &str| rounds.iter().filter_map(|x| x[key].as_u64()).sum::<u64>();
            let (offered, right) = (sum("truth_offered"), sum("truth_offered_right"));
            out.push_str(&format!(
                "| {} | {} / {} | {} | {} | {} | {} | {} | {} |\n",
                match (g.method.as_str(), g.flag_fraction, g.skip_judged) {
                    ("qwen", _, _) => format!("qwen 0.5B ({} rows, 1 round)", g.relabel_rows),
                    (m, Some(f), _) => format!("{m}, flag {:.0}%/round", 100.0 * f),
                    (m, None, true) => format!("{m}, skip judged pairs"),
                    (m, None, false) => m.to_string(),
                },
                pct(&rounds[0]["flag_precision"]),
                pct(&rounds[0]["flag_recall"]),
                if offered == 0 {
                    "-".into()
                } else {
                    let r1 = &rounds[0];
                    format!(
                        "{:.1} / {:.1}",
                        100.0 * r1["truth_offered_right"].as_f64().unwrap_or(0.0)
                            / r1["truth_offered"].as_f64().unwrap_or(1.0).max(1.0),
                        100.0 * right as f64 / offered as f64
                    )
                },
                series("train_label_accuracy", &r["train_label_accuracy_before"]),
                series("test_accuracy", &r["test_accuracy_before"]),
                rounds
                    .last()
                    .map(|x| x["train_rows"].to_string())
                    .unwrap_or_default(),
                sum("judged"),
                // The simulated judge's usage figures are the scripted server's constants.
                if g.method.starts_with("sim-") {
                    "n/a".to_string()
                } else {
                    (sum("prompt_tokens") + sum("completion_tokens")).to_string()
                },
            ));
        }
    }
    out
}

/// The targets, each with the measured figures and whether it is met.
fn targets(results: &BTreeMap<String, Value>) -> Value {
    let get = |name: &str| results.get(name);
    let mut out = serde_json::Map::new();
    for (name, key) in [
        ("uniform-0.2-sim-p0.9", "p0.9_uniform20"),
        ("uniform-0.2-sim-p0.9-flag20", "p0.9_uniform20_flag20"),
        (
            "uniform-0.2-sim-p0.9-skipjudged",
            "p0.9_uniform20_skip_judged",
        ),
    ] {
        let Some(r) = get(name) else { continue };
        let label_r2 = r["rounds"][1]["train_label_accuracy"]
            .as_f64()
            .unwrap_or(0.0);
        let test_r2 = r["rounds"][1]["test_accuracy"].as_f64().unwrap_or(0.0);
        let clean = r["clean_test_accuracy"].as_f64().unwrap_or(0.0);
        out.insert(
            format!("{key}_label_accuracy_after_2_rounds_ge_95"),
            json!({"value": label_r2, "met": label_r2 >= 0.95}),
        );
        out.insert(
            format!("{key}_test_after_2_rounds_within_1pt_of_clean"),
            json!({"value": test_r2, "clean": clean, "gap_points": 100.0 * (clean - test_r2), "met": clean - test_r2 <= 0.01}),
        );
    }
    let mut wins = Vec::new();
    for (name, r) in results {
        let Some(prefix) = name
            .strip_suffix("-sim-p0.9")
            .or_else(|| name.strip_suffix("-sim-p1"))
        else {
            continue;
        };
        let last = |r: &Value| {
            r["rounds"]
                .as_array()
                .and_then(|a| a.last())
                .map(|x| x["test_accuracy"].as_f64().unwrap_or(0.0))
                .unwrap_or(0.0)
        };
        let (Some(flip), Some(drop)) = (
            get(&format!("{prefix}-flip")),
            get(&format!("{prefix}-drop")),
        ) else {
            continue;
        };
        let (a, f, d) = (last(r), last(flip), last(drop));
        wins.push(json!({"setting": name, "relabel": a, "flip": f, "drop": d, "beats_both": a > f && a > d}));
    }
    let all = wins.iter().all(|w| w["beats_both"] == true);
    out.insert(
        "relabel_beats_flip_and_drop_at_p_ge_0.9".into(),
        json!({"met": all, "settings": wins}),
    );
    Value::Object(out)
}
