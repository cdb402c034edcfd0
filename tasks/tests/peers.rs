//! Our scores agree with the reference implementations on the same inputs, run in the tests'
//! Python venv: tagging with seqeval 1.2.2 (its default conlleval-style
//! `classification_report`, ill-formed sequences included), generation with sacreBLEU 2.6.0
//! (corpus BLEU and chrF, several references per segment), detection with pycocotools 2.0.11
//! (COCO mAP, per class).

use std::path::PathBuf;
use std::process::Command;

use relabel_tasks::data::LabelSpec;
use relabel_tasks::tagging::{read_tags, score, Scheme};

/// The Python `cargo xtask test` installs pyarrow, seqeval and sacreBLEU into (`RELABEL_TEST_PYTHON`).
fn python() -> PathBuf {
    let p = std::env::var_os("RELABEL_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            relabel_tasks::home::relabel_home().join("bench/pyarrow-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask test` installs seqeval and sacreBLEU into it",
        p.display()
    );
    p
}

/// Runs a peer's Python `script` on `input` (a JSON file); its stdout, parsed.
fn peer(script: &str, input: &std::path::Path, who: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{who}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts our figure `a` equals the peer's `b` within `tol`.
fn close_to(a: f64, b: &serde_json::Value, tol: f64, what: &str) {
    let b = b.as_f64().unwrap_or(f64::NAN);
    assert!((a - b).abs() < tol, "{what}: ours {a}, the peer's {b}");
}

/// Seeded sequences: mostly well-formed entities, with stray I- tags and type changes.
fn sequences(seed: u64, n: usize, types: &[&str]) -> Vec<Vec<String>> {
    let mut x = seed;
    let mut next = move |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    (0..n)
        .map(|_| {
            let len = 1 + next(12) as usize;
            (0..len)
                .map(|_| match next(10) {
                    0..=4 => "O".to_string(),
                    5..=6 => format!("B-{}", types[next(types.len() as u64) as usize]),
                    _ => format!("I-{}", types[next(types.len() as u64) as usize]),
                })
                .collect()
        })
        .collect()
}

#[test]
fn entity_scores_agree_with_seqeval() {
    let types = ["PER", "LOC", "ORG", "MISC"];
    let spec = LabelSpec::from_names(types.map(String::from));
    let gold = sequences(1, 400, &types);
    // Predictions: the gold with a third of the tags redrawn (same lengths).
    let noise = sequences(2, 400, &types);
    let pred: Vec<Vec<String>> = gold
        .iter()
        .zip(&noise)
        .enumerate()
        .map(|(i, (g, n))| {
            g.iter()
                .enumerate()
                .map(|(j, t)| {
                    if (i + j) % 3 == 0 {
                        n.get(j).cloned().unwrap_or_else(|| "O".into())
                    } else {
                        t.clone()
                    }
                })
                .collect()
        })
        .collect();
    let ids = |seqs: &[Vec<String>]| -> Vec<Vec<u32>> {
        seqs.iter()
            .map(|s| {
                let v: Vec<&str> = s.iter().map(String::as_str).collect();
                read_tags(&v, Scheme::Iob2, &spec, &|_| None).0
            })
            .collect()
    };
    let ours = score(&spec, &ids(&gold), &ids(&pred));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("seqs.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&serde_json::json!({"gold": gold, "pred": pred})).unwrap(),
    )
    .unwrap();
    let script = r#"
import json, sys
from seqeval.metrics import classification_report
d = json.load(open(sys.argv[1]))
r = classification_report(d["gold"], d["pred"], output_dict=True, zero_division=0)
print(json.dumps({k: {m: float(v) for m, v in row.items()} for k, row in r.items()}))
"#;
    let theirs = peer(script, &input, "seqeval");
    let close = |a: f64, b: &serde_json::Value, what: &str| close_to(a, b, 1e-9, what);
    for t in types {
        let (o, s) = (&ours.per_type[t], &theirs[t]);
        close(o.precision, &s["precision"], &format!("{t} precision"));
        close(o.recall, &s["recall"], &format!("{t} recall"));
        close(o.f1, &s["f1-score"], &format!("{t} f1"));
        close(o.support as f64, &s["support"], &format!("{t} support"));
    }
    let m = &theirs["micro avg"];
    close(ours.precision, &m["precision"], "micro precision");
    close(ours.recall, &m["recall"], "micro recall");
    close(ours.f1, &m["f1-score"], "micro f1");
    // The data is not trivial: some but not all entities match.
    assert!(ours.f1 > 0.2 && ours.f1 < 0.95, "{}", ours.f1);
}

/// Seeded hypotheses and 1-4 references each: E2E-like sentences with punctuation, digits,
/// prices, hyphens, quotes, HTML entities and non-ASCII text, perturbed word by word.
fn generation_corpus() -> (Vec<String>, Vec<Vec<String>>) {
    let words = [
        "The",
        "Eagle",
        "is",
        "a",
        "cheap",
        "coffee",
        "shop",
        "near",
        "Burger",
        "King,",
        "in",
        "the",
        "city",
        "centre.",
        "It",
        "has",
        "a",
        "5",
        "out",
        "of",
        "5",
        "rating",
        "and",
        "costs",
        "£20-25.",
        "family-friendly",
        "isn't",
        "\"Aromi\"",
        "café",
        "naïve",
        "3.50,",
        "1,000",
        "(riverside)",
        "&amp;",
        "pub!",
        "Zizzi's",
        "—",
        "x/y",
        "rated:",
        "high?",
    ];
    let mut x = 7u64;
    let mut next = move |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let mut hyps = Vec::new();
    let mut refs = Vec::new();
    for _ in 0..300 {
        let len = 3 + next(14);
        let base: Vec<&str> = (0..len)
            .map(|_| words[next(words.len() as u64) as usize])
            .collect();
        let nrefs = 1 + next(4) as usize;
        let mut rs = Vec::new();
        for _ in 0..nrefs {
            let mut r = Vec::new();
            for w in &base {
                match next(8) {
                    0 => {}
                    1 => r.push(words[next(words.len() as u64) as usize]),
                    _ => r.push(w),
                }
            }
            rs.push(r.join(" "));
        }
        let mut h = Vec::new();
        for w in &base {
            match next(5) {
                0 => {}
                1 => h.push(words[next(words.len() as u64) as usize]),
                _ => h.push(w),
            }
        }
        // Some empty and some one-word hypotheses: the edge cases of the n-gram counts.
        hyps.push(match next(40) {
            0 => String::new(),
            1 => h.first().copied().unwrap_or("a").to_string(),
            _ => h.join(" "),
        });
        refs.push(rs);
    }
    (hyps, refs)
}

#[test]
fn bleu_and_chrf_agree_with_sacrebleu() {
    use relabel_tasks::textmetrics::{corpus_bleu, corpus_chrf, sentence_chrf, tokenize_13a};
    let (hyps, refs) = generation_corpus();
    let most = refs.iter().map(Vec::len).max().unwrap();
    // sacreBLEU takes reference streams; a segment with fewer references pads with None.
    let streams: Vec<Vec<Option<&String>>> = (0..most)
        .map(|k| refs.iter().map(|r| r.get(k)).collect())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gen.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&serde_json::json!({"hyps": hyps, "streams": streams, "first": refs.iter().map(|r| &r[0]).collect::<Vec<_>>()})).unwrap(),
    )
    .unwrap();
    let script = r#"
import json, sys
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
assert sacrebleu.__version__ == "2.6.0", sacrebleu.__version__
d = json.load(open(sys.argv[1]))
tok = Tokenizer13a()
out = {
    "bleu": BLEU().corpus_score(d["hyps"], d["streams"]).score,
    "chrf": CHRF().corpus_score(d["hyps"], d["streams"]).score,
    "bleu1": BLEU().corpus_score(d["hyps"], [d["first"]]).score,
    "chrf1": CHRF().corpus_score(d["hyps"], [d["first"]]).score,
    "sentence_chrf": [CHRF().sentence_score(h, [r]).score for h, r in zip(d["hyps"], d["first"])],
    "tok": [tok(h.rstrip()) for h in d["hyps"]],
}
print(json.dumps(out))
"#;
    let theirs = peer(script, &input, "sacreBLEU");
    let close = |a: f64, b: &serde_json::Value, what: &str| close_to(a, b, 1e-6, what);
    for (i, h) in hyps.iter().enumerate() {
        assert_eq!(
            tokenize_13a(h),
            theirs["tok"][i].as_str().unwrap(),
            "13a tokens of {h:?}"
        );
        close(
            sentence_chrf(h, &refs[i][0]),
            &theirs["sentence_chrf"][i],
            &format!("sentence chrF of {h:?}"),
        );
    }
    let first: Vec<Vec<String>> = refs.iter().map(|r| vec![r[0].clone()]).collect();
    close(
        corpus_bleu(&hyps, &refs),
        &theirs["bleu"],
        "multi-reference BLEU",
    );
    close(
        corpus_chrf(&hyps, &refs),
        &theirs["chrf"],
        "multi-reference chrF",
    );
    close(
        corpus_bleu(&hyps, &first),
        &theirs["bleu1"],
        "single-reference BLEU",
    );
    close(
        corpus_chrf(&hyps, &first),
        &theirs["chrf1"],
        "single-reference chrF",
    );
    // The corpus is not trivial: scores are neither 0 nor 100, and more references help.
    let (b, b1) = (corpus_bleu(&hyps, &refs), corpus_bleu(&hyps, &first));
    assert!(b > 5.0 && b < 95.0 && b > b1, "{b} {b1}");
}

/// Seeded scenes for mAP: 3 classes (the third never annotated), images without boxes, boxes
/// the detector misses, jittered and swapped predictions, false alarms, and tied scores.
fn detection_corpus() -> (
    Vec<Vec<relabel_tasks::detection::BBox>>,
    Vec<Vec<relabel_tasks::detection::ScoredBox>>,
) {
    use relabel_tasks::detection::{BBox, ScoredBox};
    let mut x = 7u64;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let (mut gts, mut dets) = (Vec::new(), Vec::new());
    for _ in 0..120 {
        let n = (next() * 5.0) as usize;
        let mut g = Vec::new();
        let mut d = Vec::new();
        for _ in 0..n {
            let (x0, y0) = ((next() * 80.0) as f32, (next() * 80.0) as f32);
            let (w, h) = (4.0 + (next() * 30.0) as f32, 4.0 + (next() * 30.0) as f32);
            let class = (next() * 2.0) as u32;
            let a = BBox {
                class,
                xmin: x0,
                ymin: y0,
                xmax: x0 + w,
                ymax: y0 + h,
            };
            g.push(a);
            if next() < 0.15 {
                continue; // missed
            }
            let jit: Vec<f32> = (0..4)
                .map(|i| ((next() - 0.5) * if i % 2 == 0 { w } else { h } as f64 * 0.4) as f32)
                .collect();
            let swapped = next() < 0.1;
            let s = if next() < 0.2 { 0.5 } else { next() as f32 };
            d.push(ScoredBox {
                bbox: BBox {
                    class: if swapped { 1 - class } else { class },
                    xmin: a.xmin + jit[0],
                    ymin: a.ymin + jit[1],
                    xmax: a.xmax + jit[2],
                    ymax: a.ymax + jit[3],
                },
                score: s,
            });
        }
        for _ in 0..(next() * 3.0) as usize {
            let (x0, y0) = ((next() * 80.0) as f32, (next() * 80.0) as f32);
            d.push(ScoredBox {
                bbox: BBox {
                    class: (next() * 3.0) as u32,
                    xmin: x0,
                    ymin: y0,
                    xmax: x0 + 10.0,
                    ymax: y0 + 12.5,
                },
                score: if next() < 0.3 {
                    0.5
                } else {
                    (next() * 0.6) as f32
                },
            });
        }
        gts.push(g);
        dets.push(d);
    }
    (gts, dets)
}

#[test]
fn map_agrees_with_pycocotools() {
    use relabel_tasks::detection::coco_map;
    let (gts, dets) = detection_corpus();
    let coco_box = |b: &relabel_tasks::detection::BBox| {
        let (x, y) = (b.xmin as f64, b.ymin as f64);
        vec![x, y, b.xmax as f64 - x, b.ymax as f64 - y]
    };
    let mut anns = Vec::new();
    for (i, g) in gts.iter().enumerate() {
        for b in g {
            let bb = coco_box(b);
            anns.push(serde_json::json!({"id": anns.len() + 1, "image_id": i + 1,
                "category_id": b.class + 1, "bbox": bb, "area": bb[2] * bb[3], "iscrowd": 0}));
        }
    }
    let mut res = Vec::new();
    for (i, d) in dets.iter().enumerate() {
        for p in d {
            res.push(
                serde_json::json!({"image_id": i + 1, "category_id": p.bbox.class + 1,
                "bbox": coco_box(&p.bbox), "score": p.score as f64}),
            );
        }
    }
    let gt = serde_json::json!({
        "images": (1..=gts.len()).map(|i| serde_json::json!({"id": i, "width": 120, "height": 120})).collect::<Vec<_>>(),
        "categories": (1..=3).map(|k| serde_json::json!({"id": k, "name": format!("c{k}")})).collect::<Vec<_>>(),
        "annotations": anns,
    });
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("det.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&serde_json::json!({"gt": gt, "res": res})).unwrap(),
    )
    .unwrap();
    let script = r#"
import contextlib, json, sys
import numpy as np
from importlib.metadata import version
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
assert version("pycocotools") == "2.0.11", version("pycocotools")
d = json.load(open(sys.argv[1]))
with contextlib.redirect_stdout(sys.stderr):
    gt = COCO()
    gt.dataset = d["gt"]
    gt.createIndex()
    dt = gt.loadRes(d["res"])
    e = COCOeval(gt, dt, "bbox")
    e.evaluate(); e.accumulate(); e.summarize()
p = e.eval["precision"]
def mean(x):
    x = x[x > -1]
    return float(np.mean(x)) if x.size else None
print(json.dumps({
    "map": float(e.stats[0]), "map50": float(e.stats[1]), "map75": float(e.stats[2]),
    "per_class": [mean(p[:, :, k, 0, 2]) for k in range(p.shape[2])],
    "per_class50": [mean(p[0, :, k, 0, 2]) for k in range(p.shape[2])],
}))
"#;
    let theirs = peer(script, &input, "pycocotools");
    let ours = coco_map(&gts, &dets, 3);
    close_to(ours.map, &theirs["map"], 1e-6, "mAP@[.5:.95]");
    close_to(ours.map50, &theirs["map50"], 1e-6, "mAP@0.5");
    close_to(ours.map75, &theirs["map75"], 1e-6, "mAP@0.75");
    for k in 0..2 {
        close_to(
            ours.per_class[k],
            &theirs["per_class"][k],
            1e-6,
            "per-class AP",
        );
        close_to(
            ours.per_class50[k],
            &theirs["per_class50"][k],
            1e-6,
            "per-class AP50",
        );
    }
    // The third class has detections but no annotated box: left out by both.
    assert!(ours.per_class[2].is_nan() && theirs["per_class"][2].is_null());
    // Not trivial: neither perfect nor zero.
    assert!(
        ours.map50 > 0.3 && ours.map50 < 0.95 && ours.map < ours.map50,
        "{ours:?}"
    );
}
