//! Click-through-rate prediction end to end on reduced MovieLens-100k (as `cargo xtask setup`
//! fetches it): the example manifest builds clicks with known false positives, a factorization
//! machine flags the clicks it doubts, and the fixes (drop, T-CE, the local LLM's judgement) are
//! scored on the fixed clean test, with AUC and log-loss checked against scikit-learn.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use common::*;
use serde_json::Value;

/// The local-LLM test starts llama-server: one at a time in this file.
static LOCAL_LLM: Mutex<()> = Mutex::new(());

fn ml100k() -> PathBuf {
    let p = relabel_plugins::home::relabel_home().join("data/ml-100k");
    assert!(
        p.join("ml-100k.inter").exists(),
        "{} is missing: `cargo xtask setup` fetches it",
        p.display()
    );
    p
}

fn project() -> Fixture {
    project_of("ctr_movielens.yaml")
}

fn project_of(manifest: &str) -> Fixture {
    let text = std::fs::read_to_string(format!("manifests/{manifest}")).unwrap();
    let f = Fixture::new(&text);
    f.add_script("make_ctr.py");
    f
}

fn args(sets: &[&str], targets: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--set".to_string(),
        format!("ml100k={}", ml100k().display()),
    ];
    for s in sets {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    for t in targets {
        a.extend(["--target".to_string(), t.to_string()]);
    }
    a
}

fn run(f: &mut Fixture, a: &[String]) -> (i32, Value) {
    f.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// gold.csv of the data folder: row id -> false positive.
fn gold(report: &Value) -> HashMap<String, bool> {
    let dir = output_path(report, "movielens", "data");
    let text = std::fs::read_to_string(dir.join("gold.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (c[0].to_string(), c[2] == "1")
        })
        .collect()
}

const SMALL: &[&str] = &["users=80", "negatives=2", "epochs=4"];

#[test]
fn flags_are_doubted_clicks_and_the_scores_agree_with_scikit_learn() {
    let mut f = project();
    let (code, report) = run(
        &mut f,
        &args(SMALL, &["evaluate", "evaluate_dropped", "evaluate_tce"]),
    );
    assert_eq!(code, 0, "{report:#}");
    // Only clicks of train are flagged, as click -> no_click, under 10% of the train clicks.
    let clicks = node(&report, "data")["metrics"]["train_rows_per_label"]["click"]
        .as_u64()
        .unwrap() as usize;
    let flags = read_jsonl(&output_path(&report, "flag", "flags"));
    assert_eq!(
        flags.len(),
        clicks / 10,
        "{} flags of {clicks} clicks",
        flags.len()
    );
    for fl in &flags {
        assert_eq!(fl["split"], "train", "{fl}");
        assert_eq!(fl["label"], "click", "{fl}");
        assert_eq!(fl["candidate"], "no_click", "{fl}");
    }
    // Ranked by loss: the flagged clicks hold more false positives than the clicks at large.
    let g = gold(&report);
    let fp_in_flags = flags
        .iter()
        .filter(|fl| g[fl["id"].as_str().unwrap()])
        .count() as f64
        / flags.len() as f64;
    let train =
        std::fs::read_to_string(output_path(&report, "movielens", "data").join("train.csv"))
            .unwrap();
    let train_clicks: Vec<&str> = train
        .lines()
        .skip(1)
        .filter(|l| l.ends_with(",1"))
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let base = train_clicks.iter().filter(|id| g[**id]).count() as f64 / train_clicks.len() as f64;
    assert!(
        fp_in_flags > 1.2 * base,
        "false positives: {fp_in_flags:.3} of the flags, {base:.3} of all clicks"
    );
    // Dropping leaves exactly the flagged rows out.
    assert_eq!(
        node(&report, "dropped")["metrics"]["changed"].as_u64(),
        Some(flags.len() as u64)
    );
    // AUC and log-loss on the fixed test agree with scikit-learn's on the same arrays.
    for (eval, pred, data) in [
        ("evaluate", "predict", "data"),
        ("evaluate_tce", "predict_tce", "data"),
        ("evaluate_dropped", "predict_dropped", "dropped"),
    ] {
        let m = &node(&report, eval)["metrics"];
        let script = r#"
import sys, json, pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score, log_loss
p = pq.read_table(sys.argv[1]).to_pydict()
d = pq.read_table(sys.argv[2]).to_pydict()
assert p["id"] == d["id"]
y = [1 if l == "click" else 0 for l in d["label"]]
q = [float(r[1]) for r in p["probs"]]
print(json.dumps({"auc": roc_auc_score(y, q), "log_loss": log_loss(y, q)}))
"#;
        let out = std::process::Command::new(test_python())
            .arg("-c")
            .arg(script)
            .arg(output_path(&report, pred, "predictions").join("test.parquet"))
            .arg(output_path(&report, data, "dataset").join("test.parquet"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sk: Value = serde_json::from_slice(&out.stdout).unwrap();
        for k in ["auc", "log_loss"] {
            let ours = m[format!("test_{k}")].as_f64().unwrap();
            let theirs = sk[k].as_f64().unwrap();
            assert!(
                (ours - theirs).abs() < 1e-9,
                "{eval} {k}: ours {ours}, scikit-learn {theirs}"
            );
        }
        let auc = m["test_auc"].as_f64().unwrap();
        assert!(auc > 0.7 && auc < 1.0, "{eval}: test AUC {auc}");
        // Calibration: mean p(click) near the observed rate.
        let (mp, obs) = (
            m["test_mean_predicted"].as_f64().unwrap(),
            m["test_observed_rate"].as_f64().unwrap(),
        );
        assert!(
            (mp - obs).abs() < 0.15,
            "{eval}: mean p {mp}, observed {obs}"
        );
    }
    // A second run is all cached.
    let (code, again) = run(
        &mut f,
        &args(SMALL, &["evaluate", "evaluate_dropped", "evaluate_tce"]),
    );
    assert_eq!(code, 0);
    assert!(
        with_status(&again, "ran").is_empty(),
        "{:?}",
        statuses(&again)
    );
}

#[test]
fn the_example_manifest_runs_reduced_with_the_local_llm() {
    let _serial = LOCAL_LLM.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = project();
    let mut sets = SMALL.to_vec();
    sets.push("relabel_rows=10");
    let (code, report) = run(&mut f, &args(&sets, &[]));
    assert_eq!(code, 0, "{report:#}");
    let decisions = read_jsonl(&output_path(&report, "judge", "decisions"));
    assert_eq!(decisions.len(), 10);
    let mut changed = Vec::new();
    for d in &decisions {
        assert_eq!(d["label"], "click", "{d}");
        assert_eq!(d["candidate"], "no_click", "{d}");
        match d["outcome"].as_str().unwrap() {
            "keep" => assert_eq!(d["chosen"], "click", "{d}"),
            "change" => {
                assert_eq!(d["chosen"], "no_click", "{d}");
                changed.push(d["id"].as_str().unwrap().to_string());
            }
            "undecided" => assert!(d["failure"].is_string(), "{d}"),
            other => panic!("unknown outcome {other}"),
        }
    }
    let decided = decisions
        .iter()
        .filter(|d| d["outcome"] != "undecided")
        .count();
    assert!(decided >= 5, "{decided} of 10 decided");
    // The judged version holds the changes: a changed click is a no-click now.
    let script = r#"
import sys, json, pyarrow.parquet as pq
d = pq.read_table(sys.argv[1]).to_pydict()
print(json.dumps(dict(zip(d["id"], d["label"]))))
"#;
    let out = std::process::Command::new(test_python())
        .arg("-c")
        .arg(script)
        .arg(output_path(&report, "judged", "dataset").join("train.parquet"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels: HashMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    for id in &changed {
        assert_eq!(labels[id], "no_click", "{id}");
    }
    assert_eq!(
        node(&report, "judged")["metrics"]["changed"].as_u64(),
        Some(changed.len() as u64)
    );
    let auc = node(&report, "evaluate_judged")["metrics"]["test_auc"]
        .as_f64()
        .unwrap();
    assert!(auc > 0.7 && auc < 1.0, "test AUC {auc}");
}

#[test]
fn a_behavior_log_of_impressions_and_clicks_feeds_the_same_task() {
    let mut f = project_of("ctr_behavior_log.yaml");
    let (code, report) = run(&mut f, &args(SMALL, &[]));
    assert_eq!(code, 0, "{report:#}");
    // The log's rows are the CSV rows of the same data: per split, as many rows and clicks.
    let dir = output_path(&report, "movielens", "data");
    let m = &node(&report, "log")["metrics"];
    let mut clicks_in_csv = 0;
    for split in ["train", "dev", "test"] {
        let csv = std::fs::read_to_string(dir.join(format!("{split}.csv"))).unwrap();
        let rows: Vec<&str> = csv.lines().skip(1).collect();
        assert_eq!(
            m["split_rows"][split].as_u64(),
            Some(rows.len() as u64),
            "{split}: {m}"
        );
        clicks_in_csv += rows.iter().filter(|l| l.ends_with(",1")).count();
    }
    assert_eq!(
        m["per_label"]["click"].as_u64(),
        Some(clicks_in_csv as u64),
        "{m}"
    );
    // Every impression with a click 3 s later was overridden by it.
    assert_eq!(m["overridden"].as_u64(), Some(clicks_in_csv as u64), "{m}");
    let ds: Value = serde_json::from_str(
        &std::fs::read_to_string(output_path(&report, "log", "dataset").join("dataset.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ds["task"], "ctr", "{ds}");
    // The FM trains on it and the flags are train clicks, as with the CSV dataset.
    for fl in read_jsonl(&output_path(&report, "flag", "flags")) {
        assert_eq!(
            (fl["split"].as_str(), fl["label"].as_str()),
            (Some("train"), Some("click"))
        );
    }
    for eval in ["evaluate", "evaluate_dropped"] {
        let auc = node(&report, eval)["metrics"]["test_auc"].as_f64().unwrap();
        assert!(auc > 0.7 && auc < 1.0, "{eval}: test AUC {auc}");
    }
}

#[test]
fn bad_ctr_rows_are_named_by_file_and_line() {
    let manifest = r#"
version: 1
name: bad_ctr
nodes:
  - id: data
    kind: dataset
    config:
      task: ctr
      train: train.csv
      ctr: {user: [user, age], item: [item], numeric: [age]}
      label_column: click
"#;
    let mut f = Fixture::new(manifest);
    f.write(
        "train.csv",
        "user,item,age,click\n1,10,30,1\n2,11,old,0\n3,12,40,maybe\n4,13,22,0\n",
    );
    let (code, report) = f.run(&[]);
    assert_ne!(code, 0);
    let e = node(&report, "data")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        e.contains("train.csv:3: field \"age\" is numeric but holds \"old\""),
        "{e}"
    );
    assert!(
        e.contains("train.csv:4: column \"click\" holds \"maybe\""),
        "{e}"
    );
    // A feature column the file lacks is named with the header it has.
    f.write("train.csv", "user,age,click\n1,30,1\n");
    let (code, report) = f.run(&[]);
    assert_ne!(code, 0);
    let e = node(&report, "data")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(e.contains("missing column \"item\""), "{e}");
}
