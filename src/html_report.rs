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
    /// (round, or outside loops the evaluator's position in the run: 1, 2, ...; dev accuracy,
    /// test accuracy) per evaluator instance.
    pub accuracy: Vec<(u32, Option<f64>, Option<f64>)>,
    /// label -> number of flags (all filters and miners of the run).
    pub flags_per_class: BTreeMap<String, u64>,
    /// "old -> new" -> rows changed (all apply_labels instances).
    pub changes: BTreeMap<String, u64>,
    /// The last evaluation's labels and test confusion matrix.
    pub labels: Vec<String>,
    pub confusion: Vec<Vec<u64>>,
    /// (text, old, new, confidence, source) of applied changes.
    pub examples: Vec<(String, String, String, Option<f64>, String)>,
    /// What the per-round figures are: accuracy (classification) or entity F1 (tagging).
    pub measure: String,
    /// Tagging: the last evaluation's test scores per entity type (type, P, R, F1, support).
    pub per_type: Vec<(String, f64, f64, f64, u64)>,
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
    for n in &nodes {
        let m = &n["metrics"];
        match n["kind"].as_str().unwrap_or("") {
            "evaluator" => {
                let step = n["round"]
                    .as_u64()
                    .map(|r| r as u32)
                    .unwrap_or(s.accuracy.len() as u32 + 1);
                // Tagging evaluators report entity F1 where classification reports accuracy.
                let tagging = m["test_f1"].is_number() || m["dev_f1"].is_number();
                let key = if tagging { "f1" } else { "accuracy" };
                s.measure = if tagging { "Entity F1" } else { "Accuracy" }.into();
                s.accuracy.push((
                    step,
                    m[format!("dev_{key}")].as_f64(),
                    m[format!("test_{key}")].as_f64(),
                ));
                if let Some(ev) = path_of(n, "evaluation")
                    .and_then(|p| std::fs::read(p).ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                {
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
            "disagreement_filter" => add(&mut s.flags_per_class, &m["flags_per_class"]),
            "similarity_miner" => add(&mut s.flags_per_class, &m["flags_per_candidate"]),
            "apply_labels" => {
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
                    }
                }
            }
            "binary_relabeler" => {
                if let Some(p) = path_of(n, "decisions") {
                    for line in std::fs::read_to_string(p).unwrap_or_default().lines() {
                        let Ok(d) = serde_json::from_str::<Value>(line) else {
                            continue;
                        };
                        if d["outcome"] == "change" && s.examples.len() < 30 {
                            s.examples.push((
                                d["text"].as_str().unwrap_or("").to_string(),
                                d["label"].as_str().unwrap_or("").to_string(),
                                d["chosen"].as_str().unwrap_or("").to_string(),
                                d["confidence"].as_f64(),
                                d["source"].as_str().unwrap_or("").to_string(),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    s.accuracy.sort_by_key(|a| a.0);
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Dev and test accuracy per round, as an SVG line chart.
fn accuracy_chart(
    acc: &[(u32, Option<f64>, Option<f64>)],
    measure: &str,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let ys: Vec<f64> = acc.iter().flat_map(|a| [a.1, a.2]).flatten().collect();
        let lo = ys.iter().cloned().fold(1.0f64, f64::min).min(0.9) - 0.02;
        let xmax = acc.iter().map(|a| a.0).max().unwrap_or(1).max(1) as f64 + 0.5;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{measure} per round"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0.5f64..xmax, lo.max(0.0)..1.0f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("accuracy")
            .x_labels(acc.len().max(2))
            .draw()
            .map_err(|e| e.to_string())?;
        let x = |r: u32| if r == 0 { 1.0 } else { r as f64 };
        for (name, color, pick) in [
            ("dev (labels change: inflated)", BLUE, 1usize),
            ("fixed test", RED, 2usize),
        ] {
            let pts: Vec<(f64, f64)> = acc
                .iter()
                .filter_map(|a| if pick == 1 { a.1 } else { a.2 }.map(|v| (x(a.0), v)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Horizontal bars of `items` (label, count), largest first, at most 25.
fn bar_chart(title: &str, items: &BTreeMap<String, u64>) -> Result<String, String> {
    let mut v: Vec<(&String, &u64)> = items.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.truncate(25);
    let h = (90 + 28 * v.len() as u32).max(170);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let max = v.iter().map(|x| *x.1).max().unwrap_or(1).max(1);
        let n = v.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(230)
            .build_cartesian_2d(0u64..max + max / 10 + 1, (0..n).into_segmented())
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = v.iter().map(|x| x.0.clone()).collect();
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

/// The HTML page.
pub fn html(s: &Summary) -> Result<String, String> {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>relabel: {p} {id}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.note{{background:#fff6dd;padding:8px}}figure{{margin:1em 0}}</style></head><body>
<h1>relabel: {p}</h1><p>run {id}: {st}</p>
<p class="note">Dev labels change during relabelling, so dev gains are inflated; the fixed human test split is the honest measure.</p>"#,
        p = esc(&s.pipeline),
        id = esc(&s.run_id),
        st = esc(&s.status)
    );
    let measure = if s.measure.is_empty() {
        "Accuracy"
    } else {
        s.measure.as_str()
    };
    let _ = write!(h, "<h2>{} per round</h2>", esc(measure));
    if s.accuracy.is_empty() {
        h.push_str("<p>No evaluator ran in this run.</p>");
    } else {
        h.push_str("<table><tr><th>round (or evaluation)</th><th>dev</th><th>fixed test</th></tr>");
        let f = |x: Option<f64>| {
            x.map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or("-".into())
        };
        for a in &s.accuracy {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                a.0,
                f(a.1),
                f(a.2)
            );
        }
        h.push_str("</table>");
        let _ = write!(
            h,
            "<figure>{}</figure>",
            accuracy_chart(&s.accuracy, measure)?
        );
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
    if !s.examples.is_empty() {
        h.push_str("<h2>Changed examples</h2><table><tr><th>text</th><th>old</th><th>new</th><th>confidence</th><th>by</th></tr>");
        for (t, o, n, c, by) in &s.examples {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(t),
                esc(o),
                esc(n),
                c.map(|c| format!("{c:.2}")).unwrap_or("-".into()),
                esc(by)
            );
        }
        h.push_str("</table>");
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
    if !s.accuracy.is_empty() {
        m.push_str("| round | dev | fixed test |\n|---:|---:|---:|\n");
        let f = |x: Option<f64>| {
            x.map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or("-".into())
        };
        for a in &s.accuracy {
            let _ = writeln!(m, "| {} | {} | {} |", a.0, f(a.1), f(a.2));
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
    let s = summarise(report);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let page = dir.join("report.html");
    std::fs::write(&page, html(&s)?).map_err(|e| format!("{}: {e}", page.display()))?;
    std::fs::write(dir.join("summary.md"), markdown(&s))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(page)
}
