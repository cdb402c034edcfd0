//! The badcase loop end to end (trainer, evaluator, the model's own embeddings, similarity miner, relabeler against a
//! scripted judge, apply) and its HTML report, loaded in a real headless Chromium: it renders
//! without console errors and shows its charts.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use relabel_testkit::{chat_completion, offered, Reply, Server};
use serde_json::json;

fn manifest(base_url: &str) -> String {
    format!(
        r#"
version: 1
name: badcases
llm:
  judge: {{base_url: "{base_url}", model: scripted, max_concurrency: 4}}
nodes:
  - id: make_data
    kind: command
    config:
      run: python3 scripts/make_intents.py ${{outputs.data}} 400 0.3
      files: [scripts/make_intents.py]
      outputs: [data]
  - id: data
    kind: dataset
    inputs: [make_data.data]
    config: {{in_input: true, train: train.jsonl, dev: dev.jsonl, test: test.jsonl, labels: labels.yaml, id_column: id}}
  - id: rounds
    loop:
      max_rounds: 2
      until: "evaluate.badcase_rate < 0.0"
      carry:
        dataset: {{from: data.dataset, next: apply.dataset}}
    nodes:
      - id: train
        kind: trainer
        inputs: [rounds.dataset]
        config: {{epochs: 3, patience: 1, seed: 1, threads: 2}}
      - id: predict
        kind: self_predictor
        inputs: {{model: train.model, dataset: rounds.dataset}}
        config: {{}}
      - id: evaluate
        kind: evaluator
        inputs: {{predictions: predict.predictions, dataset: rounds.dataset}}
        config: {{}}
      - id: rep
        kind: embedder
        inputs: {{dataset: rounds.dataset, model: train.model}}
        config: {{source: model}}
      - id: mine
        kind: similarity_miner
        inputs: {{badcases: evaluate.badcases, dataset: rounds.dataset, embeddings: rep.embeddings}}
        config: {{top_k: 3, threshold: 0.3}}
      - id: relabel
        kind: binary_relabeler
        inputs: {{flags: mine.flags, dataset: rounds.dataset}}
        config: {{}}
      - id: apply
        kind: apply_labels
        inputs: {{dataset: rounds.dataset, decisions: relabel.decisions}}
        config: {{}}
"#
    )
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `page` with `extra` flags; panics (with its log) if it fails.
fn headless(
    profile: &std::path::Path,
    page: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let run = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    run
}

#[test]
fn the_badcase_loop_runs_and_its_report_renders_in_headless_chromium() {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "Debian's chromium is needed (.ci/run installs it)"
    );
    // A judge that always takes the badcase's human label (the flag's candidate).
    let server = Server::start(Arc::new(|req| {
        let body = req.json().unwrap_or_default();
        let pair = offered(&body);
        Reply::ok(chat_completion(&json!({"label": pair[0]}).to_string()))
    }))
    .unwrap();
    let mut f = Fixture::new(&manifest(&server.base_url()));
    f.add_script("make_intents.py");
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    // The loop ran both rounds (the until condition never holds), each evaluated on the same test rows.
    let e1 = &node(&report, "evaluate@1")["metrics"];
    let e2 = &node(&report, "evaluate@2")["metrics"];
    assert!(e1["test_accuracy"].as_f64().is_some() && e2["test_accuracy"].as_f64().is_some());
    assert!(
        e1["badcases"].as_u64().unwrap() > 0,
        "a 3-epoch model on 30% noise makes mistakes: {e1}"
    );
    let flags = read_jsonl(&output_path(&report, "mine@1", "flags"));
    assert!(!flags.is_empty());
    assert!(flags.iter().all(|fl| fl["label"] != fl["candidate"]));
    // Mined through the trained model's own representation and the worker's kNN.
    assert_eq!(node(&report, "mine@1")["metrics"]["by"], "embeddings");
    // fastText's hidden size (the trainer's default `fasttext.dim`).
    assert_eq!(node(&report, "rep@1")["metrics"]["dim"], 64);

    let loops = report["loops"].as_array().unwrap();
    assert_eq!(
        (loops[0]["rounds"].as_u64(), loops[0]["stopped_by"].as_str()),
        (Some(2), Some("max_rounds"))
    );

    let page = f.html_report();
    let summary = std::fs::read_to_string(f.path().join("html/summary.md")).unwrap();
    assert!(summary.contains("| 2 |"), "{summary}");

    let profile = f.path().join("chromium-profile");
    let run = headless(
        &profile,
        &page,
        &[
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=2000",
            "--dump-dom",
        ],
    );
    let dom = String::from_utf8_lossy(&run.stdout);
    let log = String::from_utf8_lossy(&run.stderr);
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "console errors: {console:?}");
    // The rendered page has its charts: accuracy lines, flag and change bars, the heatmap.
    assert!(dom.contains("<title>relabel: badcases"), "{dom:.300}");
    assert!(
        dom.matches("<svg").count() >= 3,
        "charts missing from the rendered page"
    );
    assert!(dom.contains("aria-label=\"confusion matrix\""));
    assert!(dom.contains("fixed test"));
    // The headline leads: flagged, asked, changed, the judge's outcomes, test before -> after
    // with its interval.
    let head = dom.find("class=\"headline\"").expect("a headline");
    assert!(
        head < dom.find("<svg").unwrap(),
        "the headline comes before the charts"
    );
    let flagged: u64 = ["mine@1", "mine@2"]
        .iter()
        .map(|n| node(&report, n)["metrics"]["flags"].as_u64().unwrap())
        .sum();
    assert!(dom.contains(&format!("{flagged} flagged, ")), "{dom:.2000}");
    assert!(
        dom.contains("judge: ") && dom.contains("95% CI"),
        "{dom:.2000}"
    );
    // This loop mines the fixed test's own errors: the miner and the page say what that costs.
    let warning = node(&report, "mine@1")["metrics"]["warning"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(warning.contains("fixed test split"), "{warning}");
    assert!(dom.contains("class=\"warn\""), "no warning on the page");
    assert!(summary.contains("**Warning:**"), "{summary}");

    // A screenshot is a picture with content (not a blank page).
    let shot = f.path().join("shot.png");
    let screenshot = format!("--screenshot={}", shot.display());
    headless(
        &profile,
        &page,
        &["--hide-scrollbars", "--window-size=1000,1400", &screenshot],
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 20_000,
        "the screenshot looks blank"
    );

    // With a target the first round already meets, the loop stops after it (round 1 is cached).
    f.write(
        "p.yaml",
        &manifest(&server.base_url()).replace("badcase_rate < 0.0", "badcase_rate < 1.0"),
    );
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0);
    let loops = report["loops"].as_array().unwrap();
    assert_eq!(
        (loops[0]["rounds"].as_u64(), loops[0]["stopped_by"].as_str()),
        (Some(1), Some("until"))
    );
    assert_eq!(node(&report, "evaluate@1")["status"], "cached");
}

#[test]
fn a_separate_badcase_split_is_mined_instead_of_the_fixed_test_and_the_report_shows_both() {
    let server = Server::start(Arc::new(|req| {
        let body = req.json().unwrap_or_default();
        let pair = offered(&body);
        Reply::ok(chat_completion(&json!({"label": pair[0]}).to_string()))
    }))
    .unwrap();
    let yaml = manifest(&server.base_url()).replace(
        "labels: labels.yaml, id_column: id}",
        "labels: labels.yaml, id_column: id, badcase_fraction: 0.5}",
    );
    assert!(yaml.contains("badcase_fraction"));
    let mut f = Fixture::new(&yaml);
    f.add_script("make_intents.py");
    let (code, report) = f.run(&[]);
    assert_eq!(code, 0, "{report:#}");
    let d = &node(&report, "data")["metrics"];
    let (test, bad) = (
        d["test_rows"].as_u64().unwrap(),
        d["badcase_rows"].as_u64().unwrap(),
    );
    assert!(test > 0 && bad > 0, "{d}");
    let e1 = &node(&report, "evaluate@1")["metrics"];
    assert_eq!(e1["badcase_split"], "badcase");
    assert!(
        e1["test_accuracy"].is_number() && e1["badcase_accuracy"].is_number(),
        "{e1}"
    );
    // The badcases are the badcase split's errors, and they alone are mined: no warning.
    let bad_rows = read_jsonl(&output_path(&report, "evaluate@1", "badcases"));
    assert!(!bad_rows.is_empty());
    assert!(
        bad_rows.iter().all(|b| b["split"] == "badcase"),
        "{bad_rows:?}"
    );
    let m = &node(&report, "mine@1")["metrics"];
    assert!(m["warning"].is_null(), "{m}");
    // Neither human split is ever changed.
    let audit = read_jsonl(&output_path(&report, "apply@1", "audit"));
    assert!(
        audit
            .iter()
            .all(|a| a["split"] == "train" || a["split"] == "dev"),
        "{audit:?}"
    );
    let page = std::fs::read_to_string(f.html_report()).unwrap();
    assert!(page.contains("badcase split (mined)"), "no badcase column");
    assert!(!page.contains("class=\"warn\""));
}
