//! `relabel report RUN`: a static HTML page (and Markdown for a CI summary) of a run: accuracy per
//! round on dev and on the fixed test split, flags and label changes per class, the test
//! confusion matrix as a heatmap, and the most-changed examples. Charts are SVG drawn here
//! (plotters), so the page needs no network and no script.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

/// What the page shows, gathered from a run report and the artifacts it points to.
#[derive(Debug, Default)]
pub struct Summary {
    pub pipeline: String,
    pub run_id: String,
    pub status: String,
    /// One point per evaluator instance, in round order.
    pub accuracy: Vec<Point>,
    /// label -> number of flags (all filters and miners of the run).
    pub flags_per_class: BTreeMap<String, u64>,
    /// "old -> new" -> rows changed (all apply_labels instances).
    pub changes: BTreeMap<String, u64>,
    /// The last evaluation's labels and test confusion matrix.
    pub labels: Vec<String>,
    pub confusion: Vec<Vec<u64>>,
    /// Applied changes, with their evidence.
    pub examples: Vec<Example>,
    /// What the per-round figures are: accuracy (classification) or entity F1 (tagging).
    pub measure: String,
    /// Tagging: the last evaluation's test scores per entity type (type, P, R, F1, support).
    pub per_type: Vec<(String, f64, f64, f64, u64)>,
    /// The fixed test's rows, its measure before and after (the first evaluation of a loop's
    /// first round, else the run's first evaluation; the run's last), and its per-class F1 then.
    pub test_rows: Option<u64>,
    pub test_before: Option<f64>,
    pub test_after: Option<f64>,
    pub first_class_f1: BTreeMap<String, f64>,
    pub last_class_f1: BTreeMap<String, f64>,
    /// Rows flagged (filters and miners), judge outcomes, and what the questions cost.
    pub flagged: u64,
    pub keep: u64,
    pub change: u64,
    pub undecided: u64,
    pub tokens: u64,
    pub cost_usd: Option<f64>,
    /// Nodes' warnings (`node: text`), e.g. a miner reading the fixed test's badcases.
    pub warnings: Vec<String>,
    /// Detection: applied box changes, drawn before and after (the first [`MAX_BOX_CHANGES`]).
    pub box_changes: Vec<BoxChange>,
}

/// How many box changes the page draws.
pub const MAX_BOX_CHANGES: usize = 24;

/// An applied box change: the image (in the version it was applied to), the site and labels.
#[derive(Debug, Clone)]
pub struct BoxChange {
    pub id: String,
    pub old: String,
    pub new: String,
    pub by: String,
    pub image: std::path::PathBuf,
    pub site: relabel_plugins::detection::BoxSite,
}

impl BoxChange {
    /// The crops' file names under the report's folder, before and after.
    fn files(i: usize) -> [String; 2] {
        [
            format!("crops/{i:03}-before.png"),
            format!("crops/{i:03}-after.png"),
        ]
    }
}

/// A changed row as the page shows it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub old: String,
    pub new: String,
    pub confidence: Option<f64>,
    pub by: String,
    /// The model's probabilities of both labels and the rule that flagged the row.
    pub evidence: String,
    /// The judge's raw answer.
    pub answer: String,
}

/// One evaluation: its round (or, outside loops, its position in the run: 1, 2, ...) and the
/// measure on dev, on the fixed test split, and on the badcase split when there is one.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: u32,
    pub dev: Option<f64>,
    pub test: Option<f64>,
    pub badcase: Option<f64>,
}

/// Per-class F1 of an evaluation's test scores.
fn class_f1(ev: &Value) -> BTreeMap<String, f64> {
    ev["test"]["per_class"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v["f1"].as_f64().map(|f| (k.clone(), f)))
                .collect()
        })
        .unwrap_or_default()
}

fn add(map: &mut BTreeMap<String, u64>, v: &Value) {
    if let Some(o) = v.as_object() {
        for (k, n) in o {
            *map.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
}

/// Reads a run report and the artifacts it names.
pub fn summarise(report: &Value) -> Summary {
    let mut s = Summary {
        pipeline: report["pipeline"].as_str().unwrap_or("").to_string(),
        run_id: report["run_id"].as_str().unwrap_or("").to_string(),
        status: report["status"].as_str().unwrap_or("").to_string(),
        ..Summary::default()
    };
    let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
    let path_of = |n: &Value, o: &str| {
        n["outputs"][o]["path"]
            .as_str()
            .map(std::path::PathBuf::from)
    };
    // (is a loop's round 1, position in the run, test measure, per-class F1) of the evaluation
    // that counts as "before", and of the last one.
    type Eval = (bool, usize, Option<f64>, BTreeMap<String, f64>);
    let mut first_eval: Option<Eval> = None;
    let mut last_eval: Option<Eval> = None;
    for n in &nodes {
        let m = &n["metrics"];
        if let Some(w) = m["warning"].as_str() {
            s.warnings.push(format!(
                "{}: {w}",
                n["instance"].as_str().or(n["id"].as_str()).unwrap_or("")
            ));
        }
        match n["kind"].as_str().unwrap_or("") {
            "evaluator" => {
                let step = n["round"]
                    .as_u64()
                    .map(|r| r as u32)
                    .unwrap_or(s.accuracy.len() as u32 + 1);
                // Tagging evaluators report entity F1, detection COCO mAP and CTR AUC where
                // classification reports accuracy.
                let has = |k: &str| {
                    m[format!("test_{k}")].is_number() || m[format!("dev_{k}")].is_number()
                };
                let (key, measure) = if has("f1") {
                    ("f1", "Entity F1")
                } else if has("map") {
                    ("map", "COCO mAP")
                } else if has("auc") {
                    ("auc", "AUC")
                } else {
                    ("accuracy", "Accuracy")
                };
                s.measure = measure.into();
                s.accuracy.push(Point {
                    step,
                    dev: m[format!("dev_{key}")].as_f64(),
                    test: m[format!("test_{key}")].as_f64(),
                    badcase: m[format!("badcase_{key}")].as_f64(),
                });
                if let Some(ev) = path_of(n, "evaluation")
                    .and_then(|p| std::fs::read(p).ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                {
                    if let Some(rows) = ev["test"]["rows"].as_u64() {
                        s.test_rows = Some(rows);
                    }
                    let here: Eval = (
                        n["round"].as_u64() == Some(1),
                        s.accuracy.len(),
                        m[format!("test_{key}")].as_f64(),
                        class_f1(&ev),
                    );
                    // A loop's first round is the baseline (a reference model evaluated before
                    // it is not); else the run's first evaluation.
                    let better = match &first_eval {
                        None => true,
                        Some((r1, pos, _, _)) => here.0 && (!r1 || here.1 < *pos),
                    };
                    if better {
                        first_eval = Some(here.clone());
                    }
                    last_eval = Some(here);
                    if let Some(t) = ev["test"]["per_type"].as_object() {
                        s.per_type = t
                            .iter()
                            .map(|(k, v)| {
                                let f = |n: &str| v[n].as_f64().unwrap_or(0.0);
                                (
                                    k.clone(),
                                    f("precision"),
                                    f("recall"),
                                    f("f1"),
                                    v["support"].as_u64().unwrap_or(0),
                                )
                            })
                            .collect();
                    }
                    if let Some(c) = ev["test"]["confusion"].as_array() {
                        s.confusion = c
                            .iter()
                            .map(|r| {
                                r.as_array()
                                    .map(|r| r.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
                                    .unwrap_or_default()
                            })
                            .collect();
                        s.labels = ev["labels"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default();
                    }
                }
            }
            "disagreement_filter" => {
                add(&mut s.flags_per_class, &m["flags_per_class"]);
                s.flagged += m["flags"].as_u64().unwrap_or(0);
            }
            "similarity_miner" => {
                add(&mut s.flags_per_class, &m["flags_per_candidate"]);
                s.flagged += m["flags"].as_u64().unwrap_or(0);
            }
            "apply_labels" => {
                // Detection's new version (images carried), read once a box change shows up.
                let mut version: Option<Option<relabel_plugins::data::Dataset>> = None;
                if let Some(p) = path_of(n, "audit") {
                    for line in std::fs::read_to_string(p).unwrap_or_default().lines() {
                        let Ok(a) = serde_json::from_str::<Value>(line) else {
                            continue;
                        };
                        let (old, new) = (
                            a["old_label"].as_str().unwrap_or(""),
                            a["new_label"].as_str().unwrap_or(""),
                        );
                        *s.changes.entry(format!("{old} -> {new}")).or_default() += 1;
                        if s.box_changes.len() >= MAX_BOX_CHANGES {
                            continue;
                        }
                        let Ok(site) = serde_json::from_value::<relabel_plugins::detection::BoxSite>(
                            a["site"].clone(),
                        ) else {
                            continue;
                        };
                        let Some(dir) = path_of(n, "dataset") else {
                            continue;
                        };
                        let ds = version
                            .get_or_insert_with(|| relabel_plugins::data::Dataset::read(&dir).ok());
                        let image = ds.as_ref().and_then(|d| {
                            let split = d.split(a["split"].as_str()?)?;
                            let row = a["row"].as_u64()? as usize;
                            (split.ids.get(row)? == a["id"].as_str()?)
                                .then(|| dir.join(&split.texts[row]))
                        });
                        if let Some(image) = image {
                            s.box_changes.push(BoxChange {
                                id: a["id"].as_str().unwrap_or("").to_string(),
                                old: old.to_string(),
                                new: new.to_string(),
                                by: a["source"].as_str().unwrap_or("").to_string(),
                                image,
                                site,
                            });
                        }
                    }
                }
            }
            "binary_relabeler" => {
                s.keep += m["keep"].as_u64().unwrap_or(0);
                s.change += m["change"].as_u64().unwrap_or(0);
                s.undecided += m["undecided"].as_u64().unwrap_or(0);
                s.tokens += m["prompt_tokens"].as_u64().unwrap_or(0)
                    + m["completion_tokens"].as_u64().unwrap_or(0);
                if let Some(c) = m["cost_usd"].as_f64() {
                    *s.cost_usd.get_or_insert(0.0) += c;
                }
                if let Some(p) = path_of(n, "decisions") {
                    for line in std::fs::read_to_string(p).unwrap_or_default().lines() {
                        let Ok(d) = serde_json::from_str::<Value>(line) else {
                            continue;
                        };
                        if d["outcome"] == "change" && s.examples.len() < 30 {
                            // The evidence: the model's probabilities of the two labels, and
                            // the judge's answer.
                            let prob = |k: &str| {
                                d[k].as_f64()
                                    .map(|p| format!("{p:.2}"))
                                    .unwrap_or("-".into())
                            };
                            let evidence = format!(
                                "model: {} {} vs {} {}{}",
                                d["label"].as_str().unwrap_or(""),
                                prob("label_prob"),
                                d["candidate"].as_str().unwrap_or(""),
                                prob("candidate_prob"),
                                d["rule"]
                                    .as_str()
                                    .map(|r| format!("; flagged by {r}"))
                                    .unwrap_or_default()
                            );
                            s.examples.push(Example {
                                text: d["text"].as_str().unwrap_or("").to_string(),
                                old: d["label"].as_str().unwrap_or("").to_string(),
                                new: d["chosen"].as_str().unwrap_or("").to_string(),
                                confidence: d["confidence"].as_f64(),
                                by: d["source"].as_str().unwrap_or("").to_string(),
                                evidence,
                                answer: d["answer"].as_str().unwrap_or("").to_string(),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    s.accuracy.sort_by_key(|a| a.step);
    if let Some((_, _, t, f1)) = first_eval {
        s.test_before = t;
        s.first_class_f1 = f1;
    }
    if let Some((_, _, t, f1)) = last_eval {
        s.test_after = t;
        s.last_class_f1 = f1;
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart's series: name, colour, and the value it takes from a point.
type Series = (&'static str, RGBColor, fn(&Point) -> Option<f64>);

const SERIES: [Series; 3] = [
    (
        "dev (labels change: inflated)",
        RGBColor(40, 90, 200),
        |p| p.dev,
    ),
    ("fixed test", RGBColor(200, 30, 30), |p| p.test),
    ("badcase split (mined)", RGBColor(30, 140, 60), |p| {
        p.badcase
    }),
];

/// The series a run has values for.
fn present(acc: &[Point]) -> Vec<&'static Series> {
    SERIES
        .iter()
        .filter(|(_, _, pick)| acc.iter().any(|p| pick(p).is_some()))
        .collect()
}

/// The measure per round on dev, the fixed test (and the badcase split), as an SVG line chart
/// whose axis spans the values (the legend is HTML under it, so it never covers a line).
fn accuracy_chart(acc: &[Point], measure: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let ys: Vec<f64> = acc
            .iter()
            .flat_map(|p| SERIES.iter().filter_map(|(_, _, pick)| pick(p)))
            .collect();
        if ys.is_empty() {
            // Nothing to draw (an evaluator with none of the figures charted here).
            return Ok(String::new());
        }
        let (min, max) = ys
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), y| (l.min(*y), h.max(*y)));
        let pad = ((max - min) * 0.15).max(0.01);
        let (lo, hi) = ((min - pad).max(0.0), (max + pad).min(1.0));
        let xmax = acc.iter().map(|a| a.step).max().unwrap_or(1).max(1) as f64 + 0.5;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{measure} per round"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0.5f64..xmax, lo..hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc(measure.to_lowercase())
            .x_labels(acc.len().max(2))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{:.1}%", 100.0 * y))
            .draw()
            .map_err(|e| e.to_string())?;
        let x = |r: u32| if r == 0 { 1.0 } else { r as f64 };
        for (_, color, pick) in present(acc) {
            let pts: Vec<(f64, f64)> = acc
                .iter()
                .filter_map(|a| pick(a).map(|v| (x(a.step), v)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The chart's legend, in HTML.
fn legend(acc: &[Point]) -> String {
    let mut h = String::from("<p class=\"legend\">");
    for (name, c, _) in present(acc) {
        let _ = write!(
            h,
            "<span><i style=\"background:rgb({},{},{})\"></i>{}</span>",
            c.0,
            c.1,
            c.2,
            esc(name)
        );
    }
    h.push_str("</p>");
    h
}

/// A label shortened to `max` characters (an ellipsis marks the cut).
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Horizontal bars of `items` (label, count), largest first, at most 25.
fn bar_chart(title: &str, items: &BTreeMap<String, u64>) -> Result<String, String> {
    let mut v: Vec<(&String, &u64)> = items.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.truncate(25);
    let h = (90 + 28 * v.len() as u32).max(170);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let max = v.iter().map(|x| *x.1).max().unwrap_or(1).max(1);
        let n = v.len().max(1);
        // Long names are shortened; the label area fits the longest one left (about 7 px a
        // character at this size).
        let names: Vec<String> = v.iter().map(|x| shorten(x.0, 48)).collect();
        let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size((longest * 7 + 16).clamp(80, 360))
            .build_cartesian_2d(0u64..max + max / 10 + 1, (0..n).into_segmented())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(v.iter().enumerate().map(|(i, (_, c))| {
                let mut bar = Rectangle::new(
                    [
                        (0, SegmentValue::Exact(i)),
                        (**c, SegmentValue::Exact(i + 1)),
                    ],
                    RGBColor(70, 120, 180).filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The confusion matrix (rows: human label, columns: prediction), shaded by row share.
fn heatmap(labels: &[String], m: &[Vec<u64>]) -> String {
    let n = m.len();
    let cell = if n > 30 { 8 } else { 22 };
    let pad = 8;
    // Row labels on the left when they fit.
    let left = if n <= 40 { 170 } else { 0 };
    let size = pad * 2 + cell * n;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{size}" viewBox="0 0 {w} {size}" role="img" aria-label="confusion matrix"><rect width="100%" height="100%" fill="white"/>"#,
        w = size + left
    );
    for (i, row) in m.iter().enumerate() {
        if left > 0 {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" font-family="sans-serif" font-size="{}" text-anchor="end" dominant-baseline="middle">{}</text>"#,
                left - 4,
                pad + i * cell + cell / 2,
                (cell as f64 * 0.55).min(12.0),
                esc(labels.get(i).map(String::as_str).unwrap_or("?"))
            );
        }
        let total: u64 = row.iter().sum::<u64>().max(1);
        for (j, &c) in row.iter().enumerate() {
            let share = c as f64 / total as f64;
            let (r, g, b) = if i == j {
                (
                    255.0 - 200.0 * share,
                    255.0 - 90.0 * share,
                    255.0 - 200.0 * share,
                )
            } else {
                (
                    255.0 - 20.0 * share,
                    255.0 - 220.0 * share,
                    255.0 - 220.0 * share,
                )
            };
            let _ = write!(
                s,
                r##"<rect x="{}" y="{}" width="{cell}" height="{cell}" fill="rgb({},{},{})" stroke="#ddd"><title>{} -> {}: {c}</title></rect>"##,
                left + pad + j * cell,
                pad + i * cell,
                r as u8,
                g as u8,
                b as u8,
                esc(labels.get(i).map(String::as_str).unwrap_or("?")),
                esc(labels.get(j).map(String::as_str).unwrap_or("?")),
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The 95% Wilson interval of an accuracy `acc` over `n` rows, as percentages.
fn interval(acc: f64, n: u64) -> (f64, f64) {
    let (lo, hi) = relabel_plugins::score::evaluator::wilson((acc * n as f64).round() as u64, n);
    (100.0 * lo, 100.0 * hi)
}

/// The fixed test before -> after, with 95% intervals when the row count is known.
fn test_headline(s: &Summary) -> Option<String> {
    let (first, last) = (s.test_before?, s.test_after?);
    let evaluations = s.accuracy.iter().filter(|p| p.test.is_some()).count();
    // A Wilson interval is for a proportion of rows: accuracy, not F1, mAP or AUC.
    let proportion = s.measure.is_empty() || s.measure == "Accuracy";
    let with_ci = |a: f64| match s.test_rows {
        Some(n) if n > 0 && proportion => {
            let (lo, hi) = interval(a, n);
            format!("{:.2}% (95% CI {lo:.1}-{hi:.1})", 100.0 * a)
        }
        _ => format!("{:.2}%", 100.0 * a),
    };
    let rows = s
        .test_rows
        .map(|n| format!(" over {n} rows"))
        .unwrap_or_default();
    Some(if evaluations < 2 {
        format!("fixed test {}{rows}", with_ci(first))
    } else {
        format!(
            "fixed test {} -> {} ({:+.2} points){rows}",
            with_ci(first),
            with_ci(last),
            100.0 * (last - first)
        )
    })
}

/// The headline figures, one per line: what was flagged, asked and changed, the judge's
/// outcomes, the fixed test before -> after, and what the questions cost.
pub fn headline(s: &Summary) -> Vec<String> {
    let changed: u64 = s.changes.values().sum();
    let asked = s.keep + s.change + s.undecided;
    let mut out = vec![format!(
        "{} flagged, {asked} asked, {changed} changed",
        s.flagged
    )];
    if asked > 0 {
        out.push(format!(
            "judge: {} kept, {} changed, {} undecided",
            s.keep, s.change, s.undecided
        ));
    }
    if let Some(t) = test_headline(s) {
        out.push(t);
    }
    if asked > 0 {
        let cost = s.cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default();
        out.push(format!("{asked} questions, {} tokens{cost}", s.tokens));
    }
    out
}

/// Classes whose fixed-test F1 moved most between the first and the last evaluation.
fn class_deltas(s: &Summary) -> Vec<(String, f64, f64)> {
    let mut d: Vec<(String, f64, f64)> = s
        .last_class_f1
        .iter()
        .filter_map(|(k, last)| s.first_class_f1.get(k).map(|f| (k.clone(), *f, *last)))
        .filter(|(_, f, l)| (l - f).abs() > 1e-12)
        .collect();
    d.sort_by(|a, b| {
        (b.2 - b.1)
            .abs()
            .total_cmp(&(a.2 - a.1).abs())
            .then(a.0.cmp(&b.0))
    });
    d.truncate(15);
    d
}

/// The HTML page: the headline first, then the per-round chart, per-class deltas, the changed
/// examples with their evidence, and the detail charts.
pub fn html(s: &Summary) -> Result<String, String> {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>relabel: {p} {id}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}.note{{background:#fff6dd;padding:8px}}.warn{{background:#fde2e1;border-left:4px solid #c00;padding:8px}}.headline{{font-size:1.15em;line-height:1.6}}.legend span{{margin-right:1.5em;white-space:nowrap}}.legend i{{display:inline-block;width:14px;height:4px;margin-right:6px;vertical-align:middle}}figure{{margin:1em 0;overflow-x:auto}}svg{{max-width:100%;height:auto}}table.ex{{width:100%;table-layout:fixed}}table.ex td{{overflow-wrap:break-word}}</style></head><body>
<h1>relabel: {p}</h1><p>run {id}: {st}</p>"#,
        p = esc(&s.pipeline),
        id = esc(&s.run_id),
        st = esc(&s.status)
    );
    for w in &s.warnings {
        let _ = write!(h, "<p class=\"warn\">Warning: {}</p>", esc(w));
    }
    h.push_str("<ul class=\"headline\">");
    for line in headline(s) {
        let _ = write!(h, "<li>{}</li>", esc(&line));
    }
    h.push_str("</ul><p class=\"note\">Dev labels change during relabelling, so dev gains are inflated; the fixed human test split is the honest measure. A single run has no seed spread: a gain inside the 95% intervals may be training noise.</p>");
    let measure = if s.measure.is_empty() {
        "Accuracy"
    } else {
        s.measure.as_str()
    };
    let _ = write!(h, "<h2>{} per round</h2>", esc(measure));
    if s.accuracy.is_empty() {
        h.push_str("<p>No evaluator ran in this run.</p>");
    } else {
        let _ = write!(
            h,
            "<figure>{}{}</figure>",
            accuracy_chart(&s.accuracy, measure)?,
            legend(&s.accuracy)
        );
        let badcase = s.accuracy.iter().any(|p| p.badcase.is_some());
        h.push_str("<table><tr><th>round (or evaluation)</th><th>dev</th><th>fixed test</th>");
        if badcase {
            h.push_str("<th>badcase split (mined)</th>");
        }
        h.push_str("</tr>");
        let f = |x: Option<f64>| {
            x.map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or("-".into())
        };
        for a in &s.accuracy {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td>",
                a.step,
                f(a.dev),
                f(a.test)
            );
            if badcase {
                let _ = write!(h, "<td>{}</td>", f(a.badcase));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    let deltas = class_deltas(s);
    if !deltas.is_empty() {
        h.push_str("<h2>Per-class change on the fixed test</h2><p>F1 at the first and the last evaluation; the largest moves first.</p><table><tr><th>class</th><th>first</th><th>last</th><th>change</th></tr>");
        for (k, f, l) in &deltas {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{:+.1}</td></tr>",
                esc(k),
                100.0 * f,
                100.0 * l,
                100.0 * (l - f)
            );
        }
        h.push_str("</table>");
    }
    if !s.examples.is_empty() {
        h.push_str("<h2>Changed examples</h2><table class=\"ex\"><colgroup><col style=\"width:30%\"><col style=\"width:15%\"><col style=\"width:15%\"><col style=\"width:20%\"><col style=\"width:14%\"><col style=\"width:6%\"></colgroup><tr><th>text</th><th>old</th><th>new</th><th>evidence</th><th>judge's answer</th><th>by</th></tr>");
        for e in &s.examples {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.text),
                esc(&e.old),
                esc(&e.new),
                esc(&e.evidence),
                e.confidence
                    .map(|c| format!("; confidence {c:.2}"))
                    .unwrap_or_default(),
                esc(&shorten(&e.answer, 200)),
                esc(&e.by)
            );
        }
        h.push_str("</table>");
    }
    if !s.box_changes.is_empty() {
        h.push_str("<h2>Changed boxes</h2><p>The same region of the image before (the annotated box, orange) and after (the box that replaced it, blue; none where a box was removed).</p><table><tr><th>image</th><th>before</th><th>after</th><th>by</th></tr>");
        for (i, c) in s.box_changes.iter().enumerate() {
            let [before, after] = BoxChange::files(i);
            let _ = write!(
                h,
                "<tr><td>{id}</td><td><img src=\"{before}\" alt=\"before: {old}\" width=\"160\"><br>{old}</td><td><img src=\"{after}\" alt=\"after: {new}\" width=\"160\"><br>{new}</td><td>{by}</td></tr>",
                id = esc(&c.id),
                old = esc(&c.old),
                new = esc(&c.new),
                by = esc(&c.by),
            );
        }
        h.push_str("</table>");
    }
    if !s.per_type.is_empty() {
        h.push_str("<h2>Fixed test split, per entity type</h2><table><tr><th>type</th><th>precision</th><th>recall</th><th>F1</th><th>entities</th></tr>");
        for (t, p, r, f1, n) in &s.per_type {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.2}%</td><td>{:.2}%</td><td>{:.2}%</td><td>{n}</td></tr>",
                esc(t),
                100.0 * p,
                100.0 * r,
                100.0 * f1
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Flags per class</h2>");
    if s.flags_per_class.is_empty() {
        h.push_str("<p>No flags.</p>");
    } else {
        let _ = write!(
            h,
            "<figure>{}</figure>",
            bar_chart("Flagged rows per label", &s.flags_per_class)?
        );
    }
    h.push_str("<h2>Label changes</h2>");
    if s.changes.is_empty() {
        h.push_str("<p>No labels changed.</p>");
    } else {
        let _ = write!(
            h,
            "<figure>{}</figure>",
            bar_chart("Changes (old -> new)", &s.changes)?
        );
    }
    if !s.confusion.is_empty() {
        let _ = write!(
            h,
            "<h2>Confusion on the fixed test split</h2><p>Rows: human label; columns: prediction; hover a cell for its count.</p><figure>{}</figure>",
            heatmap(&s.labels, &s.confusion)
        );
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

/// The Markdown summary (for a CI job summary or a pull-request comment).
pub fn markdown(s: &Summary) -> String {
    use relabel_engine::report::md_text;
    let mut m = format!(
        "## relabel: {} (run {}, {})\n\n",
        md_text(&s.pipeline),
        md_text(&s.run_id),
        md_text(&s.status)
    );
    for w in &s.warnings {
        let _ = writeln!(m, "> **Warning:** {}\n", md_text(w));
    }
    for line in headline(s) {
        let _ = writeln!(m, "- {}", md_text(&line));
    }
    m.push('\n');
    if !s.accuracy.is_empty() {
        let badcase = s.accuracy.iter().any(|p| p.badcase.is_some());
        if badcase {
            m.push_str(
                "| round | dev | fixed test | badcase split (mined) |\n|---:|---:|---:|---:|\n",
            );
        } else {
            m.push_str("| round | dev | fixed test |\n|---:|---:|---:|\n");
        }
        let f = |x: Option<f64>| {
            x.map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or("-".into())
        };
        for a in &s.accuracy {
            if badcase {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} |",
                    a.step,
                    f(a.dev),
                    f(a.test),
                    f(a.badcase)
                );
            } else {
                let _ = writeln!(m, "| {} | {} | {} |", a.step, f(a.dev), f(a.test));
            }
        }
        m.push_str("\nDev labels change during relabelling (dev gains are inflated); judge by the fixed test split.\n\n");
    }
    let flags: u64 = s.flags_per_class.values().sum();
    let changed: u64 = s.changes.values().sum();
    let _ = writeln!(m, "Flags: {flags}; labels changed: {changed}.");
    let mut top: Vec<(&String, &u64)> = s.changes.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    for (k, v) in top.into_iter().take(10) {
        let _ = writeln!(m, "- {}: {v}", md_text(k));
    }
    m
}

/// Writes `report.html` and `summary.md` into `dir`; returns the HTML's path.
pub fn write(report: &Value, dir: &Path) -> Result<std::path::PathBuf, String> {
    let mut s = summarise(report);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Box changes are drawn here; one whose image cannot be read is left out, with a warning.
    let changes = std::mem::take(&mut s.box_changes);
    for c in changes {
        let i = s.box_changes.len();
        let drawn = relabel_plugins::judge::crops::before_after(&c.image, &c.site).and_then(
            |(before, after)| {
                for (img, name) in [before, after].iter().zip(BoxChange::files(i)) {
                    let to = dir.join(name);
                    if let Some(d) = to.parent() {
                        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
                    }
                    img.save(&to)
                        .map_err(|e| format!("{}: {e}", to.display()))?;
                }
                Ok(())
            },
        );
        match drawn {
            Ok(()) => s.box_changes.push(c),
            Err(e) => s
                .warnings
                .push(format!("box change of {}: not drawn: {e}", c.id)),
        }
    }
    let page = dir.join("report.html");
    std::fs::write(&page, html(&s)?).map_err(|e| format!("{}: {e}", page.display()))?;
    std::fs::write(dir.join("summary.md"), markdown(&s))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(page)
}
