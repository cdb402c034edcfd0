//! `cargo xtask bench ner`: sequence tagging on CoNLL-2003. The BiLSTM tagger's entity F1 on
//! the CoNLL-03 test and on CoNLL++ (the human-corrected test); finding real label errors in
//! dev against CleanCoNLL's corrections, our span disputes beside cleanlab's
//! `token_classification.filter.find_label_issues` on the same token probabilities; and fixing
//! them, judged by a simulated annotator right 90% of the time and by the real local LLM.
//! Gold sets are read from `../shared/data/conll/`, CoNLL-2003 from the registry package.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use relabel_tasks::data::{Dataset, LabelSpec};
use relabel_tasks::predictions::SplitPredictions;
use relabel_tasks::tagging::{entities, read_tags, title, Entity, Scheme};
use relabel_testkit::{Annotator, Server};
use serde_json::{json, Value};

use crate::bench::{json_output, target};
use crate::report::{metric, output, read_jsonl};

/// Row id -> tokens and CleanCoNLL's tags, for the simulated judge.
type GoldById = std::sync::Arc<GoldMap>;

/// The map behind [`GoldById`].
type GoldMap = std::sync::Mutex<HashMap<String, (Vec<String>, Vec<u32>)>>;

/// The simulated judge's port: fixed, so the relabeler's cache keys stay the same across runs.
const SIM_PORT: u16 = 18_733;
/// Budgets, as fractions of dev sentences.
const BUDGETS: [f64; 3] = [0.02, 0.05, 0.10];
/// Span rankings compared.
const SCORES: [&str; 3] = ["worst_token", "softmin", "margin"];

/// Aligns CleanCoNLL's dev tokens to the original dev's (sequence alignment over the token
/// streams) and writes the clean tag of every original token (the original tag where a token
/// has no counterpart).
const ALIGN: &str = r#"
import sys, json, difflib
def read(path):
    sents, cur = [], []
    for line in open(path, encoding="utf-8"):
        c = line.split()
        if not c or c[0] == "-DOCSTART-":
            if cur: sents.append(cur); cur = []
            continue
        cur.append((c[0], c[-1]))
    if cur: sents.append(cur)
    return sents
orig, clean = read(sys.argv[1]), read(sys.argv[2])
a = [t for s in orig for t, _ in s]
b = [t for s in clean for t, _ in s]
bt = [g for s in clean for _, g in s]
out = [g for s in orig for _, g in s]
aligned = 0
for i, j, n in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
    out[i:i + n] = bt[j:j + n]
    aligned += n
res, k = [], 0
for s in orig:
    res.append(out[k:k + len(s)]); k += len(s)
json.dump({"tags": res}, open(sys.argv[3], "w"))
print(json.dumps({"aligned_tokens": aligned, "tokens": len(a), "clean_tokens": len(b), "sentences": len(orig), "clean_sentences": len(clean)}))
"#;

/// cleanlab's token-classification issues on the probabilities we wrote: the ranked issue
/// tokens of `find_label_issues` and the sentence scores of `get_label_quality_scores`.
const CLEANLAB: &str = r#"
import sys, json, time, numpy as np
from cleanlab.token_classification.filter import find_label_issues
from cleanlab.token_classification.rank import get_label_quality_scores
d = json.load(open(sys.argv[1]))
flat = np.fromfile(sys.argv[2], dtype="<f4").reshape(-1, d["ntags"])
probs, k = [], 0
for n in d["lens"]:
    probs.append(flat[k:k + n]); k += n
t0 = time.perf_counter()
issues = find_label_issues(d["labels"], probs)
t1 = time.perf_counter()
scores, _ = get_label_quality_scores(d["labels"], probs)
print(json.dumps({"issues": [[int(i), int(j)] for i, j in issues], "sentence_scores": [float(s) for s in scores], "find_seconds": t1 - t0}))
"#;

fn python_out(py: &Path, script: &str, args: &[&Path], what: &str) -> Result<Value> {
    let mut c = Command::new(py);
    c.arg("-c").arg(script).args(args);
    json_output(&mut c, what)
}

fn relabel_run(bin: &Path, work: &Path, manifest: &str, report: &Path) -> Result<Value> {
    std::fs::write(work.join("pipeline.yaml"), manifest)?;
    std::fs::copy("manifests/ner/labels.yaml", work.join("labels.yaml"))?;
    relabel_run_file(bin, work, &["pipeline.yaml"], report)
}

fn manifest(conll: &Path, conllpp: &Path, fixing: bool) -> String {
    let c = conll.display();
    let mut m = format!(
        r#"version: 1
name: bench_ner
llm:
  sim:
    provider: openai
    base_url: http://127.0.0.1:{SIM_PORT}/v1
    model: {sim}
    api_key_env: RELABEL_JUDGE_KEY
    max_concurrency: 8
    send_metadata: true
  local:
    provider: local
    model: qwen2.5-0.5b
nodes:
  - id: data
    kind: dataset
    config: {{task: tagging, train: {c}/train.txt, dev: {c}/valid.txt, test: {c}/test.txt, labels: labels.yaml}}
  - id: datapp
    kind: dataset
    config: {{task: tagging, train: {c}/valid.txt, dev: {c}/test.txt, test: {pp}, labels: labels.yaml}}
  - id: train
    kind: trainer
    inputs: [data.dataset]
    config: {{model: bilstm, epochs: 30, patience: 3, seed: 1, threads: 2}}
  - id: predict
    kind: self_predictor
    inputs: {{model: train.model, dataset: data.dataset}}
    config: {{}}
  - id: evaluate
    kind: evaluator
    inputs: {{predictions: predict.predictions, dataset: data.dataset}}
    config: {{splits: [dev, test]}}
  - id: predictpp
    kind: self_predictor
    inputs: {{model: train.model, dataset: datapp.dataset}}
    config: {{}}
  - id: evaluatepp
    kind: evaluator
    inputs: {{predictions: predictpp.predictions, dataset: datapp.dataset}}
    config: {{splits: [test]}}
"#,
        sim = Annotator::model_name(0.9),
        pp = conllpp.display(),
    );
    for s in SCORES {
        m.push_str(&format!(
            "  - id: rank_{s}\n    kind: disagreement_filter\n    inputs: {{predictions: predict.predictions, dataset: data.dataset}}\n    config: {{span_score: {s}, max_fraction: 1.0, splits: [dev]}}\n"
        ));
    }
    if fixing {
        for b in BUDGETS {
            let pct = (b * 100.0).round();
            m.push_str(&format!(
                r#"  - id: fixflags_{pct}
    kind: disagreement_filter
    inputs: {{predictions: predict.predictions, dataset: data.dataset}}
    config: {{span_score: worst_token, max_fraction: {b}, splits: [dev]}}
  - id: relabel_sim_{pct}
    kind: binary_relabeler
    inputs: {{flags: fixflags_{pct}.flags, dataset: data.dataset}}
    config: {{llm: sim, examples: 2, max_rows: 100000}}
  - id: apply_sim_{pct}
    kind: apply_labels
    inputs: {{dataset: data.dataset, decisions: relabel_sim_{pct}.decisions}}
    config: {{}}
"#
            ));
        }
        m.push_str(
            r#"  - id: relabel_llm
    kind: binary_relabeler
    inputs: {flags: fixflags_10.flags, dataset: data.dataset}
    config: {llm: local, examples: 2, max_rows: 150}
  - id: apply_llm
    kind: apply_labels
    inputs: {dataset: data.dataset, decisions: relabel_llm.decisions}
    config: {}
"#,
        );
    }
    m
}

/// Entities of every sentence in the symmetric difference of two taggings.
fn changed(a: &[Vec<u32>], b: &[Vec<u32>]) -> Vec<Vec<Entity>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (ex, ey) = (entities(x), entities(y));
            let mut d: Vec<Entity> = ex.iter().filter(|e| !ey.contains(e)).copied().collect();
            d.extend(ey.iter().filter(|e| !ex.contains(e)));
            d
        })
        .collect()
}

fn prf(hit_p: usize, n_p: usize, hit_r: usize, n_r: usize) -> Value {
    let p = hit_p as f64 / n_p.max(1) as f64;
    let r = hit_r as f64 / n_r.max(1) as f64;
    let f = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    json!({"precision": p, "recall": r, "f1": f, "flagged": n_p})
}

/// Sentence- and span-level precision/recall/F1 of `flags` ((sentence, start, end), ranked),
/// cut at the first `k` distinct sentences, against the changed spans.
fn score_flags(flags: &[(usize, usize, usize)], k: usize, truth: &[Vec<Entity>]) -> Value {
    let mut sentences: Vec<usize> = Vec::new();
    let mut kept = Vec::new();
    for &(s, a, b) in flags {
        if !sentences.contains(&s) {
            if sentences.len() == k {
                continue;
            }
            sentences.push(s);
        }
        kept.push((s, a, b));
    }
    let bad: HashSet<usize> = (0..truth.len()).filter(|&i| !truth[i].is_empty()).collect();
    let sent_hits = sentences.iter().filter(|s| bad.contains(s)).count();
    let overlaps =
        |s: usize, a: usize, b: usize, e: &Entity| a < e.end && e.start < b && s < truth.len();
    let span_hits = kept
        .iter()
        .filter(|&&(s, a, b)| truth[s].iter().any(|e| overlaps(s, a, b, e)))
        .count();
    let total_spans: usize = truth.iter().map(Vec::len).sum();
    let covered: usize = truth
        .iter()
        .enumerate()
        .map(|(s, es)| {
            es.iter()
                .filter(|e| {
                    kept.iter()
                        .any(|&(ks, a, b)| ks == s && overlaps(s, a, b, e))
                })
                .count()
        })
        .sum();
    json!({
        "sentences": prf(sent_hits, sentences.len(), sent_hits, bad.len()),
        "spans": prf(span_hits, kept.len(), covered, total_spans),
    })
}

fn tags_of_names(spec: &LabelSpec, rows: &[Vec<String>]) -> Vec<Vec<u32>> {
    rows.iter()
        .map(|t| {
            let v: Vec<&str> = t.iter().map(String::as_str).collect();
            read_tags(&v, Scheme::Iob2, spec, &|_| None).0
        })
        .collect()
}

pub fn ner(root: &Path, args: &[String]) -> Result<Value> {
    let fixing = !args.iter().any(|a| a == "--no-fixing");
    let bin = crate::relabel_bin(root)?;
    let conll = crate::conll2003()?;
    let shared = root.join("../shared/data/conll");
    let conllpp = shared.join("conllpp_test.txt");
    let cleanconll = shared.join("cleanconll_dev.txt");
    for p in [&conllpp, &cleanconll] {
        if !p.exists() {
            bail!(
                "{} is missing (the gold sets live in ../shared/data/conll/)",
                p.display()
            );
        }
    }
    let work = root.join("target/bench-ner");
    std::fs::create_dir_all(&work)?;
    let test_py = crate::bench::bench_venv("pyarrow", crate::TEST_PYTHON)?.join("bin/python");
    let align = python_out(
        &test_py,
        ALIGN,
        &[
            &conll.join("valid.txt"),
            &cleanconll,
            &work.join("clean_dev.json"),
        ],
        "aligning CleanCoNLL",
    )?;
    eprintln!("bench ner: CleanCoNLL aligned: {align}");
    let spec =
        LabelSpec::load(Path::new("manifests/ner/labels.yaml")).map_err(anyhow::Error::msg)?;
    let clean_names: Vec<Vec<String>> = serde_json::from_value(
        serde_json::from_slice::<Value>(&std::fs::read(work.join("clean_dev.json"))?)?["tags"]
            .clone(),
    )?;
    let clean = tags_of_names(&spec, &clean_names);

    // The simulated judge answers dev questions by CleanCoNLL's reading of the span.
    let by_id: GoldById = Default::default();
    let lookup = by_id.clone();
    let judge_spec = spec.clone();
    let truth: relabel_testkit::SiteTruth = Box::new(move |id, site| {
        let m = lookup.lock().ok()?;
        let (tokens, tags) = m.get(id)?;
        let (s, e) = (
            site["start"].as_u64()? as usize,
            site["end"].as_u64()? as usize,
        );
        (e <= tags.len() && s < e).then(|| title(tokens, s, &tags[s..e], &judge_spec))
    });
    let server = Server::start_on(
        SIM_PORT,
        Annotator::of_sites(truth, 2026, Duration::ZERO).handler(),
    )
    .with_context(|| format!("starting the simulated judge on port {SIM_PORT}"))?;

    // Tagger and rankings first (the judge needs the dataset's row ids).
    let r = relabel_run(
        &bin,
        &work,
        &manifest(&conll, &conllpp, false),
        &work.join("report-rank.json"),
    )?;
    let ds = Dataset::read(&output(&r, "data", "dataset")?)?;
    let dev = ds.split("dev").context("dev split")?;
    register_gold(by_id.as_ref(), &dev.ids, &dev.tokens, &clean, "dev")?;
    let truth_spans = changed(&dev.tags, &clean);
    let before = relabel_tasks::tagging::score(&spec, &clean, &dev.tags);

    // Ours: each ranking's flags, in rank order.
    let mut ours = BTreeMap::new();
    for s in SCORES {
        let flags = read_jsonl(&output(&r, &format!("rank_{s}"), "flags")?)?;
        let ranked: Vec<(usize, usize, usize)> = flags
            .iter()
            .map(|f| {
                (
                    f["row"].as_u64().unwrap_or(0) as usize,
                    f["site"]["start"].as_u64().unwrap_or(0) as usize,
                    f["site"]["end"].as_u64().unwrap_or(0) as usize,
                )
            })
            .collect();
        ours.insert(s, ranked);
    }
    // cleanlab on the same dev probabilities.
    let preds = SplitPredictions::read(
        &output(&r, "predict", "predictions")?.join("dev.parquet"),
        dev,
        ds.prediction_width(),
    )?;
    let probs: Vec<u8> = preds.probs.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(work.join("dev_probs.f32"), probs)?;
    std::fs::write(
        work.join("dev.json"),
        serde_json::to_vec(
            &json!({"ntags": preds.classes, "lens": preds.lens, "labels": dev.tags}),
        )?,
    )?;
    let cl_py = crate::bench::bench_venv("cleanlab", &["cleanlab==2.9.0"])?.join("bin/python");
    let cl = python_out(
        &cl_py,
        CLEANLAB,
        &[&work.join("dev.json"), &work.join("dev_probs.f32")],
        "cleanlab",
    )?;
    let issues: Vec<(usize, usize, usize)> = cl["issues"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let (i, j) = (
                        x[0].as_u64().unwrap_or(0) as usize,
                        x[1].as_u64().unwrap_or(0) as usize,
                    );
                    (i, j, j + 1)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut by_score: Vec<(f64, usize)> = cl["sentence_scores"]
        .as_array()
        .map(|a| {
            a.iter()
                .enumerate()
                .map(|(i, s)| (s.as_f64().unwrap_or(1.0), i))
                .collect()
        })
        .unwrap_or_default();
    by_score.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // A sentence ranking as flags: the sentence's issue tokens if any, else the whole sentence.
    let ranked_sentences: Vec<(usize, usize, usize)> = by_score
        .iter()
        .map(|&(_, i)| (i, 0, dev.tokens[i].len()))
        .collect();
    let mut finding = BTreeMap::new();
    let mut targets = Vec::new();
    for b in BUDGETS {
        let k = (b * dev.len() as f64).floor() as usize;
        let mut row = serde_json::Map::new();
        let mut best = 0.0f64;
        for (s, flags) in &ours {
            let v = score_flags(flags, k, &truth_spans);
            best = best.max(v["sentences"]["f1"].as_f64().unwrap_or(0.0));
            row.insert(format!("relabel_{s}"), v);
        }
        let peer = score_flags(&issues, k, &truth_spans);
        let peer_f1 = peer["sentences"]["f1"].as_f64().unwrap_or(0.0);
        row.insert("cleanlab_find_label_issues".into(), peer);
        row.insert(
            "cleanlab_sentence_scores".into(),
            score_flags(&ranked_sentences, k, &truth_spans),
        );
        targets.push(target(
            &format!("our best ranking's sentence F1 >= cleanlab find_label_issues' at a budget of {}% of dev sentences", (b * 100.0).round()),
            &format!(">= {peer_f1:.4}"),
            best,
            best >= peer_f1,
        ));
        finding.insert(
            format!("budget_{}pct", (b * 100.0).round()),
            Value::Object(row),
        );
    }

    let f1_pp = metric(&r, "evaluatepp", "test_f1")
        .as_f64()
        .unwrap_or(f64::NAN);
    let train_s = metric(&r, "train", "seconds_per_epoch")
        .as_f64()
        .unwrap_or(f64::NAN);
    let epochs = metric(&r, "train", "curve")
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    let train_minutes = train_s * epochs as f64 / 60.0;
    targets.insert(
        0,
        target(
            "tagger entity F1 on CoNLL++ (human-corrected test)",
            ">= 0.86",
            f1_pp,
            f1_pp >= 0.86,
        ),
    );
    targets.insert(
        1,
        target(
            "tagger training minutes on this machine",
            "< 20",
            train_minutes,
            train_minutes < 20.0,
        ),
    );
    let mut figures = json!({
        "tagger": {
            "model": "bilstm: GloVe 6B 50d + casing + char CNN, softmax per token",
            "conll03_test_f1": metric(&r, "evaluate", "test_f1"),
            "conllpp_test_f1": f1_pp,
            "dev_f1": metric(&r, "evaluate", "dev_f1"),
            "seconds_per_epoch": train_s,
            "epochs_run": epochs,
            "best_epoch": metric(&r, "train", "best_epoch"),
            "training_minutes": train_minutes,
        },
        "cleanconll_alignment": align,
        "dev_labels_f1_against_cleanconll": before.f1,
        "dev_sentences_changed_by_cleanconll": truth_spans.iter().filter(|s| !s.is_empty()).count(),
        "dev_spans_changed_by_cleanconll": truth_spans.iter().map(Vec::len).sum::<usize>(),
        "finding": finding,
        "cleanlab_find_label_issues": {"issue_tokens": issues.len(), "seconds": cl["find_seconds"]},
    });

    if fixing {
        let r = relabel_run(
            &bin,
            &work,
            &manifest(&conll, &conllpp, true),
            &work.join("report-fix.json"),
        )?;
        let dev_f1 = |node: &str| -> Result<f64> {
            let d = Dataset::read(&output(&r, node, "dataset")?)?;
            Ok(relabel_tasks::tagging::score(&spec, &clean, &d.splits["dev"].tags).f1)
        };
        let llm_after = dev_f1("apply_llm")?;
        let mut sims = serde_json::Map::new();
        let mut best_gain = f64::NEG_INFINITY;
        let pos: HashMap<&str, usize> = dev
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        // Where CleanCoNLL's reading is among a question's two options, and which one it is.
        let gold_of = |d: &Value| -> Option<String> {
            let i = *pos.get(d["id"].as_str()?)?;
            let (s, e) = (
                d["site"]["start"].as_u64()? as usize,
                d["site"]["end"].as_u64()? as usize,
            );
            Some(title(&dev.tokens[i], s, &clean[i][s..e], &spec))
        };
        for b in BUDGETS {
            let pct = (b * 100.0).round();
            let after = dev_f1(&format!("apply_sim_{pct}"))?;
            best_gain = best_gain.max(after - before.f1);
            let ds = read_jsonl(&output(&r, &format!("relabel_sim_{pct}"), "decisions")?)?;
            let (mut cur, mut cand, mut neither) = (0, 0, 0);
            for d in &ds {
                match gold_of(d) {
                    Some(g) if d["label"] == g.as_str() => cur += 1,
                    Some(g) if d["candidate"] == g.as_str() => cand += 1,
                    _ => neither += 1,
                }
            }
            sims.insert(
                format!("budget_{pct}pct"),
                json!({
                    "flags": ds.len(),
                    "cleanconll_is_current": cur,
                    "cleanconll_is_proposed": cand,
                    "cleanconll_is_neither": neither,
                    "changed": metric(&r, &format!("apply_sim_{pct}"), "changed"),
                    "overlapped": metric(&r, &format!("apply_sim_{pct}"), "overlapped"),
                    "dev_f1_after": after,
                    "gain_points": 100.0 * (after - before.f1),
                }),
            );
        }
        // The real model's decisions against CleanCoNLL's reading of each span.
        let decisions = read_jsonl(&output(&r, "relabel_llm", "decisions")?)?;
        let pos: HashMap<&str, usize> = dev
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let (mut decided, mut right, mut offered, mut offered_right) = (0, 0, 0, 0);
        for d in &decisions {
            let (Some(chosen), Some(&i)) = (
                d["chosen"].as_str(),
                d["id"].as_str().and_then(|id| pos.get(id)),
            ) else {
                continue;
            };
            let (s, e) = (
                d["site"]["start"].as_u64().unwrap_or(0) as usize,
                d["site"]["end"].as_u64().unwrap_or(0) as usize,
            );
            let gold = title(&dev.tokens[i], s, &clean[i][s..e], &spec);
            decided += 1;
            right += usize::from(chosen == gold);
            if d["label"] == gold.as_str() || d["candidate"] == gold.as_str() {
                offered += 1;
                offered_right += usize::from(chosen == gold);
            }
        }
        targets.push(target(
            "dev label F1 against CleanCoNLL gained by relabelling with a p=0.9 judge (points; the best budget)",
            ">= 1.5",
            100.0 * best_gain,
            100.0 * best_gain >= 1.5,
        ));
        figures["fixing"] = json!({
            "dev_f1_before": before.f1,
            "ranking": "worst_token",
            "sim_p0.9": sims,
            "local_llm": {
                "judged": decisions.len(),
                "decided": decided,
                "accuracy_against_cleanconll": right as f64 / decided.max(1) as f64,
                "accuracy_where_cleanconll_offered": offered_right as f64 / offered.max(1) as f64,
                "cleanconll_offered": offered,
                "dev_f1_after": llm_after,
                "changed": metric(&r, "apply_llm", "changed"),
            },
        });
    }
    if !args.iter().any(|a| a == "--no-loop") {
        let (loop_figures, loop_targets) =
            planted_loop(&bin, &work, &conll, &conllpp, &spec, &by_id)?;
        figures["planted_loop"] = loop_figures;
        targets.extend(loop_targets);
    }
    drop(server);
    figures["targets"] = Value::Array(targets);
    Ok(figures)
}

/// A confusable type for a planted swap (LOC<->ORG, PER->ORG, MISC->LOC), by type name.
fn confusable(spec: &LabelSpec, kind: u32) -> u32 {
    let to = match spec.labels[kind as usize].name.as_str() {
        "LOC" => "ORG",
        "ORG" => "LOC",
        "PER" => "ORG",
        _ => "LOC",
    };
    spec.index(to).unwrap_or((kind + 1) % spec.len() as u32)
}

/// A draw in [0, 1) from a seed and two positions.
pub(crate) fn unit(seed: u64, a: usize, b: usize) -> f64 {
    // splitmix64 over the three numbers.
    let mut z = seed
        ^ (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (b as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    for _ in 0..2 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn write_sentences(
    path: &Path,
    tokens: &[Vec<String>],
    tags: &[Vec<u32>],
    spec: &LabelSpec,
) -> Result<()> {
    let names = relabel_tasks::tagging::tag_names(spec);
    let mut s = String::new();
    for (t, g) in tokens.iter().zip(tags) {
        for (w, k) in t.iter().zip(g) {
            s.push_str(&format!("{w} X X {}\n", names[*k as usize]));
        }
        s.push('\n');
    }
    Ok(std::fs::write(path, s)?)
}

/// The loop on planted noise: 10% of train entities swapped to a confusable type and 5%
/// dropped (seeded; the original tags are the gold), two rounds judged by the p=0.9 judge,
/// against flipping every flagged span to the model's reading and dropping flagged sentences;
/// CoNLL++ entity F1 of each, and of a tagger trained on the original labels.
fn planted_loop(
    bin: &Path,
    work: &Path,
    conll: &Path,
    conllpp: &Path,
    spec: &LabelSpec,
    by_id: &GoldById,
) -> Result<(Value, Vec<Value>)> {
    let dir = work.join("loop");
    std::fs::create_dir_all(&dir)?;
    // The original train, read as the dataset node reads it.
    let text = std::fs::read_to_string(conll.join("train.txt"))?;
    let (mut tokens, mut gold): (Vec<Vec<String>>, Vec<Vec<u32>>) = (Vec::new(), Vec::new());
    let (mut t, mut g): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for line in text.lines().chain(std::iter::once("")) {
        let c: Vec<&str> = line.split_whitespace().collect();
        if c.is_empty() || c[0] == "-DOCSTART-" {
            if !t.is_empty() {
                let raw: Vec<&str> = g.iter().map(String::as_str).collect();
                gold.push(read_tags(&raw, Scheme::Iob2, spec, &|_| None).0);
                tokens.push(std::mem::take(&mut t));
                g.clear();
            }
            continue;
        }
        t.push(c[0].to_string());
        g.push(c[c.len() - 1].to_string());
    }
    let (mut swapped, mut dropped, mut total) = (0usize, 0usize, 0usize);
    let noisy: Vec<Vec<u32>> = gold
        .iter()
        .enumerate()
        .map(|(i, tags)| {
            let mut es = Vec::new();
            for (j, mut e) in entities(tags).into_iter().enumerate() {
                total += 1;
                let u = unit(2026, i, j);
                if u < 0.10 {
                    e.kind = confusable(spec, e.kind);
                    swapped += 1;
                } else if u < 0.15 {
                    dropped += 1;
                    continue;
                }
                es.push(e);
            }
            relabel_tasks::tagging::tags_of(&es, tags.len())
        })
        .collect();
    write_sentences(&dir.join("clean_train.txt"), &tokens, &gold, spec)?;
    write_sentences(&dir.join("noisy_train.txt"), &tokens, &noisy, spec)?;
    let c = conll.display();
    let pp = conllpp.display();
    let sim = Annotator::model_name(0.9);
    let steps = |p: &str, data: &str| {
        format!(
            r#"  - id: {p}train
    kind: trainer
    inputs: [{data}]
    config: {{model: bilstm, epochs: 30, patience: 3, seed: 1, threads: 2}}
  - id: {p}predict
    kind: self_predictor
    inputs: {{model: {p}train.model, dataset: {data}}}
    config: {{}}
  - id: {p}evaluate
    kind: evaluator
    inputs: {{predictions: {p}predict.predictions, dataset: {data}}}
    config: {{splits: [test]}}
"#
        )
    };
    let round = r#"      - id: train
        kind: trainer
        inputs: [rounds.dataset]
        config: {model: bilstm, epochs: 30, patience: 3, seed: 1, threads: 2}
      - id: predict
        kind: self_predictor
        inputs: {model: train.model, dataset: rounds.dataset}
        config: {kfold: 2}
      - id: evaluate
        kind: evaluator
        inputs: {predictions: predict.predictions, dataset: rounds.dataset}
        config: {splits: [test]}
      - id: flag
        kind: disagreement_filter
        inputs: {predictions: predict.predictions, dataset: rounds.dataset}
        config: {span_score: worst_token, max_fraction: 0.1, splits: [train]}
      - id: relabel
        kind: binary_relabeler
        inputs: {flags: flag.flags, dataset: rounds.dataset}
        config: {llm: sim, examples: 2, max_rows: 100000}
      - id: apply
        kind: apply_labels
        inputs: {dataset: rounds.dataset, decisions: relabel.decisions}
        config: {}
"#;
    // The baselines' flags: the same training, k-fold and filter as round 1 (cached).
    let baseline = r#"  - id: b_train
    kind: trainer
    inputs: [noisy.dataset]
    config: {model: bilstm, epochs: 30, patience: 3, seed: 1, threads: 2}
  - id: b_predict
    kind: self_predictor
    inputs: {model: b_train.model, dataset: noisy.dataset}
    config: {kfold: 2}
  - id: b_flag
    kind: disagreement_filter
    inputs: {predictions: b_predict.predictions, dataset: noisy.dataset}
    config: {span_score: worst_token, max_fraction: 0.1, splits: [train]}
  - id: flip
    kind: apply_labels
    inputs: {dataset: noisy.dataset, flags: b_flag.flags}
    config: {action: flip}
  - id: drop
    kind: apply_labels
    inputs: {dataset: noisy.dataset, flags: b_flag.flags}
    config: {action: drop}
"#;
    let m = format!(
        r#"version: 1
name: bench_ner_loop
llm:
  sim:
    provider: openai
    base_url: http://127.0.0.1:{SIM_PORT}/v1
    model: {sim}
    api_key_env: RELABEL_JUDGE_KEY
    max_concurrency: 8
    send_metadata: true
nodes:
  - id: clean
    kind: dataset
    config: {{task: tagging, train: loop/clean_train.txt, dev: {c}/valid.txt, test: {pp}, labels: labels.yaml}}
  - id: noisy
    kind: dataset
    config: {{task: tagging, train: loop/noisy_train.txt, dev: {c}/valid.txt, test: {pp}, labels: labels.yaml}}
{clean}  - id: rounds
    loop:
      max_rounds: 2
      until: "flag.flags < 1"
      carry:
        dataset: {{from: noisy.dataset, next: apply.dataset}}
    nodes:
{round}{fin}{baseline}{flip}{drop}"#,
        clean = steps("clean_", "clean.dataset"),
        fin = steps("final_", "rounds.dataset"),
        flip = steps("flip_", "flip.dataset"),
        drop = steps("drop_", "drop.dataset"),
    );
    // The judge needs the noisy dataset's row ids: build it first.
    std::fs::write(work.join("pipeline-loop.yaml"), &m)?;
    let r = relabel_run_file(
        bin,
        work,
        &["pipeline-loop.yaml", "--target", "noisy"],
        &work.join("report-loop-data.json"),
    )?;
    let ds = Dataset::read(&output(&r, "noisy", "dataset")?)?;
    let train = ds.split("train").context("train")?;
    register_gold(by_id.as_ref(), &train.ids, &tokens, &gold, "noisy train")?;
    let before_labels = relabel_tasks::tagging::score(spec, &gold, &noisy).f1;
    let r = relabel_run_file(
        bin,
        work,
        &["pipeline-loop.yaml"],
        &work.join("report-loop.json"),
    )?;
    let f1 = |n: &str| metric(&r, n, "test_f1").as_f64().unwrap_or(f64::NAN);
    let label_f1 = |n: &str| -> Result<f64> {
        let d = Dataset::read(&output(&r, n, "dataset")?)?;
        let s = &d.splits["train"];
        // Dropped sentences are left out of the comparison (by id).
        let pos: HashMap<&str, usize> = train
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let g: Vec<Vec<u32>> = s
            .ids
            .iter()
            .map(|id| gold[pos[id.as_str()]].clone())
            .collect();
        Ok(relabel_tasks::tagging::score(spec, &g, &s.tags).f1)
    };
    let (clean, noisy_f1, after) = (f1("clean_evaluate"), f1("evaluate@1"), f1("final_evaluate"));
    let (flip, dropped_f1) = (f1("flip_evaluate"), f1("drop_evaluate"));
    let closed = (after - noisy_f1) / (clean - noisy_f1);
    let targets = vec![
        target(
            "planted loop: share of the CoNLL++ F1 gap to clean labels closed by 2 rounds (p=0.9)",
            ">= 0.5",
            closed,
            closed >= 0.5,
        ),
        target(
            "planted loop: relabelling's CoNLL++ F1 minus the better baseline's (flip, drop)",
            "> 0",
            after - flip.max(dropped_f1),
            after > flip.max(dropped_f1),
        ),
    ];
    let figures = json!({
        "train_entities": total,
        "planted_swaps": swapped,
        "planted_drops": dropped,
        "train_label_f1_noisy": before_labels,
        "train_label_f1_after_round_1": label_f1("apply@1")?,
        "train_label_f1_after_round_2": label_f1("apply@2").unwrap_or(f64::NAN),
        "train_label_f1_flip": label_f1("flip")?,
        "train_label_f1_drop": label_f1("drop")?,
        "conllpp_f1_clean_labels": clean,
        "conllpp_f1_noisy_labels": noisy_f1,
        "conllpp_f1_after_round_1": f1("evaluate@2"),
        "conllpp_f1_after_round_2": after,
        "conllpp_f1_flip": flip,
        "conllpp_f1_drop": dropped_f1,
        "gap_closed": closed,
        "flags_per_round": [metric(&r, "flag@1", "flags"), metric(&r, "flag@2", "flags")],
        "changed_per_round": [metric(&r, "apply@1", "changed"), metric(&r, "apply@2", "changed")],
    });
    Ok((figures, targets))
}

/// Tells the simulated judge each row's tokens and gold tags (rows in dataset order).
fn register_gold(
    by_id: &GoldMap,
    ids: &[String],
    tokens: &[Vec<String>],
    gold: &[Vec<u32>],
    what: &str,
) -> Result<()> {
    if ids.len() != gold.len() || tokens.len() != gold.len() {
        bail!(
            "{what}: {} sentences in the dataset, {} gold ones",
            ids.len(),
            gold.len()
        );
    }
    let mut m = by_id.lock().map_err(|_| anyhow::anyhow!("judge lock"))?;
    for (i, id) in ids.iter().enumerate() {
        m.insert(id.clone(), (tokens[i].clone(), gold[i].clone()));
    }
    Ok(())
}

/// `relabel run ARGS --jobs 1` in `work` with its cache there and the simulated judges' key;
/// the run report.
pub(crate) fn relabel_run_file(
    bin: &Path,
    work: &Path,
    args: &[&str],
    report: &Path,
) -> Result<Value> {
    // One node at a time: training times are not shared with another training, and a node
    // whose key an earlier one computed (the baselines' round-1 model) is a cache hit.
    let status = Command::new(bin)
        .arg("run")
        .args(args)
        .args(["--jobs", "1", "--report"])
        .arg(report)
        .arg("--cache")
        .arg(work.join("cache"))
        .current_dir(work)
        .env("RELABEL_JUDGE_KEY", "sim")
        .status()?;
    if !status.success() {
        bail!("the pipeline failed; see {}", report.display());
    }
    Ok(serde_json::from_slice(&std::fs::read(report)?)?)
}
