//! `evaluator`: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix on dev
//! and on the FIXED human test split; the test badcases (prediction != human label); and, when
//! given, people's right/wrong judgements of model outputs with a 95% Wilson interval.

use std::collections::HashMap;
use std::path::PathBuf;

use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::data::Dataset;
use crate::predictions::SplitPredictions;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorConfig {
    /// Splits to score (those present): dev labels change during relabelling, test's never do.
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// The split whose wrong predictions are the badcases [default: `badcase` when the dataset
    /// has one, else `test`]. Mining the fixed test's badcases biases its accuracy upward (the
    /// `similarity_miner` then warns).
    #[serde(default)]
    pub badcase_split: Option<String>,
    /// A file of people's judgements of model outputs: CSV or JSONL with `id` and
    /// `correct` (right/wrong, true/false, 1/0).
    #[serde(default)]
    pub human_judgements: Option<PathBuf>,
}

fn default_splits() -> Vec<String> {
    vec!["dev".into(), "test".into(), "badcase".into()]
}

pub use relabel_tasks::classification::{score, ClassScores, SplitScores};
use relabel_tasks::task::TaskKind;

/// The 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Reads people's judgements: `(line, id, correct)`; errors name the file and line.
pub fn read_judgements(
    path: &std::path::Path,
    shown: &std::path::Path,
) -> Result<Vec<(usize, String, bool)>, String> {
    let shown = shown.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let parse = |line: usize, v: &str| -> Result<bool, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "right" | "correct" | "true" | "1" | "yes" => Ok(true),
            "wrong" | "incorrect" | "false" | "0" | "no" => Ok(false),
            other => Err(format!("{shown}:{line}: `correct` must be right/wrong (or true/false, 1/0); found \"{other}\"")),
        }
    };
    let mut out = Vec::new();
    if path
        .to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(".jsonl")
    {
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(l).map_err(|e| format!("{shown}:{}: {e}", i + 1))?;
            let c = match &v["correct"] {
                Value::Bool(b) => *b,
                Value::String(s) => parse(i + 1, s)?,
                Value::Number(n) => parse(i + 1, &n.to_string())?,
                _ => return Err(format!("{shown}:{}: missing `correct`", i + 1)),
            };
            let id = match &v["id"] {
                Value::String(s) => s.clone(),
                Value::Null => return Err(format!("{shown}:{}: missing `id`", i + 1)),
                other => other.to_string(),
            };
            out.push((i + 1, id, c));
        }
    } else {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let h = r.headers().map_err(|e| format!("{shown}: {e}"))?.clone();
        let col = |n: &str| h.iter().position(|x| x.trim() == n);
        let (Some(id), Some(c)) = (col("id"), col("correct")) else {
            return Err(format!(
                "{shown}:1: the header needs `id` and `correct` columns"
            ));
        };
        for (i, rec) in r.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| format!("{shown}:{line}: {e}"))?;
            out.push((
                line,
                rec.get(id).unwrap_or("").to_string(),
                parse(line, rec.get(c).unwrap_or(""))?,
            ));
        }
    }
    Ok(out)
}

/// Entity scores of a tagging split, its badcases (sentences whose predicted tags differ from
/// the labels; JSON lines, when `badcases`) and their count.
fn score_tagging(
    ds: &Dataset,
    split: &str,
    rows: &crate::data::Split,
    p: &SplitPredictions,
    badcases: bool,
) -> (relabel_tasks::tagging::TagScores, String, usize) {
    use relabel_tasks::tagging::{changes, predicted_tags, score};
    let starts = p.token_starts();
    let nt = p.classes;
    let pred: Vec<Vec<u32>> = (0..rows.len())
        .map(|i| predicted_tags(&p.probs[starts[i] * nt..starts[i + 1] * nt], nt))
        .collect();
    let v = score(&ds.labels, &rows.tags, &pred);
    let mut out = String::new();
    let mut n = 0;
    for (i, predicted) in pred.iter().enumerate() {
        if *predicted == rows.tags[i] {
            continue;
        }
        n += 1;
        if badcases {
            let spans: Vec<Value> = changes(&rows.tokens[i], &rows.tags[i], predicted, &ds.labels)
                .into_iter()
                .map(|c| json!({"label": c.from, "predicted": c.to, "label_type": c.from_type, "predicted_type": c.to_type}))
                .collect();
            out.push_str(&json!({"split": split, "row": i, "id": rows.ids[i], "text": rows.texts[i], "spans": spans}).to_string());
            out.push('\n');
        }
    }
    (v, out, n)
}

/// Generation scores of a split (each distinct source once, against all its targets), the
/// badcases (sources whose output misses a slot of its record, or, for other sources, equals
/// none of the references) as JSON lines, and their count.
fn score_generation(
    split: &str,
    rows: &crate::data::Split,
    p: &SplitPredictions,
    badcases: bool,
) -> (relabel_tasks::generation::GenScores, String, usize) {
    use relabel_tasks::generation::{group_by_source, missing_slots, parse_record, score_outputs};
    let groups = group_by_source(&rows.texts, &rows.targets);
    let sources: Vec<String> = groups.iter().map(|(i, _)| rows.texts[*i].clone()).collect();
    let outputs: Vec<String> = groups.iter().map(|(i, _)| p.outputs[*i].clone()).collect();
    let refs: Vec<Vec<String>> = groups.iter().map(|(_, r)| r.clone()).collect();
    let v = score_outputs(&sources, &outputs, &refs);
    let (mut out, mut n) = (String::new(), 0usize);
    for (g, (i, r)) in groups.iter().enumerate() {
        let o = &outputs[g];
        let missing: Vec<String> = match parse_record(&sources[g]) {
            Some(rec) => missing_slots(&rec, o)
                .iter()
                .map(|s| format!("{}[{}]", s.slot, s.value))
                .collect(),
            None => Vec::new(),
        };
        let norm = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        let bad = if parse_record(&sources[g]).is_some() {
            !missing.is_empty()
        } else {
            !r.iter().any(|x| norm(x) == norm(o))
        };
        if !bad {
            continue;
        }
        n += 1;
        if badcases {
            out.push_str(
                &json!({"split": split, "row": i, "id": rows.ids[*i], "text": sources[g],
                "label": r[0], "predicted": o, "references": r.len(), "missing": missing})
                .to_string(),
            );
            out.push('\n');
        }
    }
    (v, out, n)
}

/// Detection scores of a split (COCO mAP) and its badcases: images where a confident
/// prediction (score 0.5 or more) and the annotation disagree on a box (a swap, a box
/// elsewhere, an object the model sees that nobody boxed, a box the model does not support).
fn score_detection(
    ds: &Dataset,
    split: &str,
    rows: &crate::data::Split,
    p: &SplitPredictions,
    badcases: bool,
) -> (relabel_tasks::detection::DetScores, String, usize) {
    use relabel_tasks::detection::{coco_map, title, Detection};
    let v = coco_map(&rows.boxes, &p.detections, ds.labels.len());
    let task = Detection {
        min_score: 0.5,
        ..Default::default()
    };
    let (mut out, mut n) = (String::new(), 0usize);
    for i in 0..rows.len() {
        let sites = task.sites(&rows.boxes[i], &p.detections[i]);
        if sites.is_empty() {
            continue;
        }
        n += 1;
        if badcases {
            let what: Vec<String> = sites
                .iter()
                .map(|(s, _)| {
                    format!(
                        "{}: {} / {}",
                        s.issue.name(),
                        title(s.annotated.as_ref(), &ds.labels),
                        title(s.proposed.as_ref(), &ds.labels)
                    )
                })
                .collect();
            out.push_str(
                &json!({"split": split, "row": i, "id": rows.ids[i], "text": rows.texts[i],
                "boxes": rows.boxes[i].len(), "predicted": p.detections[i].iter().filter(|d| d.score >= 0.5).count(),
                "disagreements": what})
                .to_string(),
            );
            out.push('\n');
        }
    }
    (v, out, n)
}

/// The badcase count and its share of the `of` scored items.
fn badcase_metrics(m: &mut Metrics, n: usize, of: usize) {
    m.insert("badcases".into(), json!(n));
    m.insert(
        "badcase_rate".into(),
        json!(if of == 0 { 0.0 } else { n as f64 / of as f64 }),
    );
}

/// CTR scores of a split: p(click) against its clicks.
pub fn ctr_scores(labels: &[u32], p: &SplitPredictions) -> relabel_tasks::ctr::CtrScores {
    let c = relabel_tasks::ctr::CLICK as usize;
    let y: Vec<bool> = labels.iter().map(|&k| k as usize == c).collect();
    let q: Vec<f64> = (0..p.rows()).map(|i| f64::from(p.row(i)[c])).collect();
    relabel_tasks::ctr::score(&y, &q)
}

pub struct Evaluator;

impl NodeKind for Evaluator {
    type Config = EvaluatorConfig;
    const KIND: &'static str = "evaluator";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str =
        "Scores predictions on dev and the fixed test split; lists the test badcases";

    fn outputs(_: &EvaluatorConfig) -> Vec<String> {
        vec!["evaluation".into(), "badcases".into()]
    }

    fn files(c: &EvaluatorConfig) -> Vec<PathBuf> {
        c.human_judgements.iter().cloned().collect()
    }

    fn check(_: &EvaluatorConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        crate::inputs::require_inputs(
            inputs,
            &["predictions", "dataset"],
            "{predictions: PREDICT.predictions, dataset: DATA.dataset}",
        )
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: EvaluatorConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let fail = NodeError::Failed;
        let ds =
            Dataset::read(&inputs["dataset"].path).map_err(|e| fail(format!("dataset: {e}")))?;
        let names = ds.labels.names();
        let pred_dir = inputs["predictions"].path.clone();
        let mut m = Metrics::new();
        let mut evaluation = serde_json::Map::new();
        let mut badcases = String::new();
        let mut by_id: HashMap<String, (String, u32, u32)> = HashMap::new();
        let badcase_split = c.badcase_split.clone().unwrap_or_else(|| {
            if ds.split(crate::data::BADCASE_SPLIT).is_some() {
                crate::data::BADCASE_SPLIT.to_string()
            } else {
                crate::data::FIXED_SPLIT.to_string()
            }
        });
        m.insert("badcase_split".into(), json!(badcase_split));
        for split in &c.splits {
            let Some(rows) = ds.split(split) else {
                continue;
            };
            if ds.task == TaskKind::Detection {
                let p = SplitPredictions::read_detections(
                    &pred_dir.join(crate::data::split_file(split)),
                    rows,
                    &ds.labels,
                )
                .map_err(|e| fail(format!("predictions for {split}: {e}")))?;
                let (v, bad, n) = score_detection(&ds, split, rows, &p, *split == badcase_split);
                for (k, x) in [("map", v.map), ("map50", v.map50), ("map75", v.map75)] {
                    m.insert(format!("{split}_{k}"), json!(x));
                }
                for id in &rows.ids {
                    by_id.insert(id.clone(), (split.clone(), 0, 0));
                }
                if *split == badcase_split {
                    badcases.push_str(&bad);
                    badcase_metrics(&mut m, n, rows.len());
                }
                let mut e = serde_json::to_value(&v).expect("scores serialise");
                e["per_class"] = json!(names
                    .iter()
                    .zip(v.per_class.iter().zip(&v.per_class50))
                    .map(|(n, (a, a50))| (n.to_string(), json!({"ap": a, "ap50": a50})))
                    .collect::<serde_json::Map<_, _>>());
                e.as_object_mut().map(|o| o.remove("per_class50"));
                evaluation.insert(split.clone(), e);
                continue;
            }
            let p = SplitPredictions::read(
                &pred_dir.join(crate::data::split_file(split)),
                rows,
                ds.prediction_width(),
            )
            .map_err(|e| fail(format!("predictions for {split}: {e}")))?;
            if ds.task == TaskKind::Generation {
                let (v, bad, n) = score_generation(split, rows, &p, *split == badcase_split);
                for (k, x) in [
                    ("bleu", Some(v.bleu)),
                    ("chrf", Some(v.chrf)),
                    ("exact_match", Some(v.exact_match)),
                    ("token_error_rate", Some(v.token_error_rate)),
                    ("slot_error_rate", v.slot_error_rate),
                ] {
                    if let Some(x) = x {
                        m.insert(format!("{split}_{k}"), json!(x));
                    }
                }
                for id in &rows.ids {
                    by_id.insert(id.clone(), (split.clone(), 0, 0));
                }
                if *split == badcase_split {
                    badcases.push_str(&bad);
                    badcase_metrics(&mut m, n, v.sources);
                }
                evaluation.insert(
                    split.clone(),
                    serde_json::to_value(&v).expect("scores serialise"),
                );
                continue;
            }
            if ds.task == TaskKind::Tagging {
                let (v, bad, n) = score_tagging(&ds, split, rows, &p, *split == badcase_split);
                for (k, x) in [
                    ("f1", v.f1),
                    ("precision", v.precision),
                    ("recall", v.recall),
                    ("token_accuracy", v.token_accuracy),
                ] {
                    m.insert(format!("{split}_{k}"), json!(x));
                }
                for id in &rows.ids {
                    by_id.insert(id.clone(), (split.clone(), 0, 0));
                }
                if *split == badcase_split {
                    badcases.push_str(&bad);
                    badcase_metrics(&mut m, n, rows.len());
                }
                evaluation.insert(
                    split.clone(),
                    serde_json::to_value(&v).expect("scores serialise"),
                );
                continue;
            }
            // Score against the dataset's labels (the fixed human labels for test).
            let s = score(&names, &rows.labels, &p.predicted);
            m.insert(format!("{split}_accuracy"), json!(s.accuracy));
            m.insert(format!("{split}_macro_f1"), json!(s.macro_f1));
            for i in 0..rows.len() {
                by_id.insert(
                    rows.ids[i].clone(),
                    (split.clone(), rows.labels[i], p.predicted[i]),
                );
            }
            if *split == badcase_split {
                let mut n = 0usize;
                for i in 0..rows.len() {
                    if p.predicted[i] != rows.labels[i] {
                        n += 1;
                        let (y, q) = (rows.labels[i] as usize, p.predicted[i] as usize);
                        badcases.push_str(
                            &json!({"split": split, "row": i, "id": rows.ids[i], "text": rows.texts[i],
                                "label": names[y], "predicted": names[q],
                                "label_prob": p.row(i)[y], "predicted_prob": p.row(i)[q]})
                            .to_string(),
                        );
                        badcases.push('\n');
                    }
                }
                badcase_metrics(&mut m, n, rows.len());
            }
            let mut scored = serde_json::to_value(&s).expect("scores serialise");
            if ds.task == TaskKind::Ctr {
                let v = ctr_scores(&rows.labels, &p);
                m.insert(format!("{split}_auc"), json!(v.auc));
                m.insert(format!("{split}_log_loss"), json!(v.log_loss));
                m.insert(
                    format!("{split}_calibration_error"),
                    json!(v.calibration_error),
                );
                m.insert(format!("{split}_mean_predicted"), json!(v.mean_predicted));
                m.insert(format!("{split}_observed_rate"), json!(v.observed_rate));
                scored["ctr"] = serde_json::to_value(&v).expect("scores serialise");
            }
            evaluation.insert(split.clone(), scored);
        }
        if evaluation.is_empty() {
            return Err(fail(format!(
                "none of the splits {:?} is in the dataset (it has: {})",
                c.splits,
                ds.splits.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if ds.split("dev").is_some() && c.splits.iter().any(|s| s == "dev") {
            evaluation.insert("note".into(), json!("dev labels change during relabelling, so dev gains are inflated; judge by the fixed test split"));
        }
        if let Some(j) = &c.human_judgements {
            let rows = read_judgements(&ctx.resolve(j), j).map_err(fail)?;
            let mut problems = Vec::new();
            let mut right = 0u64;
            for (line, id, ok) in &rows {
                if !by_id.contains_key(id) {
                    problems.push(format!(
                        "{}:{line}: row id \"{id}\" is not in the scored splits",
                        j.display()
                    ));
                } else if *ok {
                    right += 1;
                }
            }
            if !problems.is_empty() {
                problems.truncate(20);
                return Err(fail(problems.join("\n")));
            }
            let n = rows.len() as u64;
            let (lo, hi) = wilson(right, n);
            let h = json!({"judged": n, "right": right, "accuracy": if n == 0 { 0.0 } else { right as f64 / n as f64 }, "wilson95": [lo, hi]});
            m.insert("human_accuracy".into(), h["accuracy"].clone());
            m.insert("human_accuracy_wilson95".into(), h["wilson95"].clone());
            evaluation.insert("human".into(), h);
        }
        evaluation.insert("labels".into(), json!(names));
        let out = ctx.output_path("evaluation");
        std::fs::write(
            &out,
            serde_json::to_vec_pretty(&Value::Object(evaluation)).expect("json"),
        )
        .map_err(|e| NodeError::io("writing the evaluation", e))?;
        let bad = ctx.output_path("badcases");
        std::fs::write(&bad, badcases).map_err(|e| NodeError::io("writing badcases", e))?;
        Ok(NodeOutput {
            outputs: [
                ("evaluation".to_string(), out),
                ("badcases".to_string(), bad),
            ]
            .into(),
            metrics: m,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_a_hand_count() {
        // labels a a a b b c, predicted a b a b c c
        let s = score(&["a", "b", "c"], &[0, 0, 0, 1, 1, 2], &[0, 1, 0, 1, 2, 2]);
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(
            s.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        let a = &s.per_class["a"];
        assert_eq!((a.precision, a.recall, a.support), (1.0, 2.0 / 3.0, 3));
        let b = &s.per_class["b"];
        assert_eq!((b.precision, b.recall), (0.5, 0.5));
        let c = &s.per_class["c"];
        assert_eq!((c.precision, c.recall), (0.5, 1.0));
        let f1 = |p: f64, r: f64| 2.0 * p * r / (p + r);
        let macro_f1 = (f1(1.0, 2.0 / 3.0) + 0.5 + f1(0.5, 1.0)) / 3.0;
        assert!((s.macro_f1 - macro_f1).abs() < 1e-12);
    }

    #[test]
    fn wilson_interval_matches_known_values() {
        // 81 of 263 (a textbook example): 0.2553 .. 0.3662
        let (lo, hi) = wilson(81, 263);
        assert!(
            (lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(10, 10);
        assert!(
            (hi - 1.0).abs() < 1e-9 && (lo - 0.7225).abs() < 5e-4,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn judgements_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.csv");
        std::fs::write(&p, "id,correct\nt1,right\nt2,wrong\nt3,maybe\n").unwrap();
        let err = read_judgements(&p, std::path::Path::new("j.csv")).unwrap_err();
        assert!(
            err.starts_with("j.csv:4: `correct` must be right/wrong"),
            "{err}"
        );
        std::fs::write(&p, "id,correct\nt1,right\nt2,0\n").unwrap();
        let rows = read_judgements(&p, &p).unwrap();
        assert_eq!(rows.iter().map(|r| r.2).collect::<Vec<_>>(), [true, false]);
    }
}
