//! `votes`: rows labelled by several annotators (long or wide format, missing votes allowed),
//! aggregated by majority or by Dawid-Skene (EM over per-annotator confusion matrices). Rows
//! without a clear winner become flags whose two candidates are the two most likely labels,
//! ready for the binary relabeler; per-annotator accuracy estimates go to the metrics.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path as CfgPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{LabelSpec, Split};
use crate::flags::Flag;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VoteFormat {
    /// One row per vote: item, annotator, label.
    #[default]
    Long,
    /// One row per item, one column per annotator (empty or a `missing` value: no vote).
    Wide,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Majority,
    #[default]
    DawidSkene,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VotesConfig {
    /// The votes: CSV, TSV or whitespace-separated text (relative to the manifest, or to the
    /// input folder `data` with `in_input: true`).
    pub file: PathBuf,
    #[serde(default)]
    pub in_input: bool,
    #[serde(default)]
    pub format: VoteFormat,
    #[serde(default = "d_item")]
    pub item_column: String,
    /// Long format: the annotator's column.
    #[serde(default = "d_annotator")]
    pub annotator_column: String,
    /// Long format: the label's column.
    #[serde(default = "d_label")]
    pub label_column: String,
    /// The item's text, if the file has one (else the item id is the text).
    #[serde(default)]
    pub text_column: Option<String>,
    /// Wide format without a header: columns are annotators 0..n (and no item column: the
    /// line number is the item).
    #[serde(default)]
    pub no_header: bool,
    /// Values that mean "no vote".
    #[serde(default = "d_missing")]
    pub missing: Vec<String>,
    #[serde(default)]
    pub method: Aggregation,
    #[serde(default = "d_iter")]
    pub max_iterations: usize,
    #[serde(default = "d_tol")]
    pub tolerance: f64,
    /// Rows whose two most likely labels are closer than this (posterior or vote share) are
    /// flagged for the relabeler.
    #[serde(default = "d_margin")]
    pub min_margin: f64,
    /// A label spec (definitions for the relabeler's prompts); default: the labels seen.
    #[serde(default)]
    pub labels: Option<PathBuf>,
}

fn d_item() -> String {
    "item".into()
}
fn d_annotator() -> String {
    "annotator".into()
}
fn d_label() -> String {
    "label".into()
}
fn d_missing() -> Vec<String> {
    vec!["".into(), "-1".into(), "NA".into()]
}
fn d_iter() -> usize {
    100
}
fn d_tol() -> f64 {
    1e-6
}
fn d_margin() -> f64 {
    0.2
}

/// Votes as indices: `votes[item]` = (annotator, label) pairs.
#[derive(Debug, Clone, Default)]
pub struct VoteTable {
    pub items: Vec<String>,
    pub texts: Vec<String>,
    pub annotators: Vec<String>,
    pub labels: Vec<String>,
    pub votes: Vec<Vec<(u32, u32)>>,
}

/// The aggregation of a vote table.
#[derive(Debug, Clone)]
pub struct Aggregated {
    /// Per item, a distribution over labels (posterior, or vote shares for majority).
    pub posterior: Vec<Vec<f64>>,
    /// Per annotator, the estimated probability of giving the true label.
    pub annotator_accuracy: Vec<f64>,
    pub iterations: usize,
}

/// Majority vote: vote shares (items without votes get a uniform row).
pub fn majority(t: &VoteTable) -> Aggregated {
    let k = t.labels.len();
    let posterior = t
        .votes
        .iter()
        .map(|vs| {
            let mut p = vec![0f64; k];
            for &(_, l) in vs {
                p[l as usize] += 1.0;
            }
            let n: f64 = p.iter().sum();
            if n == 0.0 {
                vec![1.0 / k as f64; k]
            } else {
                p.into_iter().map(|x| x / n).collect()
            }
        })
        .collect::<Vec<_>>();
    let annotator_accuracy = agreement_with(t, &posterior);
    Aggregated {
        posterior,
        annotator_accuracy,
        iterations: 0,
    }
}

/// Each annotator's agreement with the argmax of `posterior`.
fn agreement_with(t: &VoteTable, posterior: &[Vec<f64>]) -> Vec<f64> {
    let mut right = vec![0f64; t.annotators.len()];
    let mut n = vec![0f64; t.annotators.len()];
    for (vs, p) in t.votes.iter().zip(posterior) {
        let best = argmax(p);
        for &(a, l) in vs {
            n[a as usize] += 1.0;
            if l as usize == best {
                right[a as usize] += 1.0;
            }
        }
    }
    right
        .iter()
        .zip(&n)
        .map(|(r, n)| if *n == 0.0 { 0.0 } else { r / n })
        .collect()
}

fn argmax(p: &[f64]) -> usize {
    let mut b = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > p[b] {
            b = i;
        }
    }
    b
}

/// Dawid-Skene: EM over class priors and per-annotator confusion matrices, started from the
/// majority vote; stops when no posterior moves more than `tol` or after `max_iter` rounds.
pub fn dawid_skene(t: &VoteTable, max_iter: usize, tol: f64) -> Aggregated {
    let k = t.labels.len();
    let m = t.annotators.len();
    let mut post = majority(t).posterior;
    let mut iterations = 0;
    let mut prior = vec![1.0 / k as f64; k];
    let mut conf = vec![vec![vec![0f64; k]; k]; m];
    for it in 0..max_iter {
        iterations = it + 1;
        // M-step (with a small pseudo-count so no probability is zero).
        prior = vec![0.01; k];
        for p in &post {
            for (c, x) in p.iter().enumerate() {
                prior[c] += x;
            }
        }
        let total: f64 = prior.iter().sum();
        prior.iter_mut().for_each(|x| *x /= total);
        for a in conf.iter_mut() {
            for row in a.iter_mut() {
                row.iter_mut().for_each(|x| *x = 0.01);
            }
        }
        for (vs, p) in t.votes.iter().zip(&post) {
            for &(a, l) in vs {
                for (c, x) in p.iter().enumerate() {
                    conf[a as usize][c][l as usize] += x;
                }
            }
        }
        for a in conf.iter_mut() {
            for row in a.iter_mut() {
                let s: f64 = row.iter().sum();
                row.iter_mut().for_each(|x| *x /= s);
            }
        }
        // E-step, in logs.
        let log_conf: Vec<Vec<Vec<f64>>> = conf
            .iter()
            .map(|a| {
                a.iter()
                    .map(|r| r.iter().map(|x| x.ln()).collect())
                    .collect()
            })
            .collect();
        let log_prior: Vec<f64> = prior.iter().map(|x| x.ln()).collect();
        let mut moved = 0f64;
        for (vs, p) in t.votes.iter().zip(post.iter_mut()) {
            let mut lp = log_prior.clone();
            for &(a, l) in vs {
                for (c, x) in lp.iter_mut().enumerate() {
                    *x += log_conf[a as usize][c][l as usize];
                }
            }
            let mx = lp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = lp.iter().map(|x| (x - mx).exp()).sum();
            for (c, x) in lp.iter().enumerate() {
                let v = (x - mx).exp() / z;
                moved = moved.max((v - p[c]).abs());
                p[c] = v;
            }
        }
        if moved < tol {
            break;
        }
    }
    let annotator_accuracy = conf
        .iter()
        .map(|a| (0..k).map(|c| prior[c] * a[c][c]).sum())
        .collect();
    Aggregated {
        posterior: post,
        annotator_accuracy,
        iterations,
    }
}

fn split_line(line: &str, tsv: bool, csv: bool) -> Vec<String> {
    if csv {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(line.as_bytes());
        return r
            .records()
            .next()
            .and_then(|x| x.ok())
            .map(|rec| rec.iter().map(|s| s.trim().to_string()).collect())
            .unwrap_or_default();
    }
    if tsv {
        line.split('\t').map(|s| s.trim().to_string()).collect()
    } else {
        // Plain text: values separated by spaces and/or commas (a trailing comma is allowed).
        line.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }
}

/// Reads a vote file; errors name the file and line.
pub fn read_votes(path: &Path, shown: &Path, c: &VotesConfig) -> Result<VoteTable, String> {
    let shown = shown.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let (csv, tsv) = (name.ends_with(".csv"), name.ends_with(".tsv"));
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header: Vec<String> = if c.no_header {
        Vec::new()
    } else {
        match lines.next() {
            Some((_, l)) => split_line(l, tsv, csv),
            None => return Err(format!("{shown}: empty file")),
        }
    };
    let col = |n: &str| -> Result<usize, String> {
        header.iter().position(|h| h == n).ok_or_else(|| {
            format!(
                "{shown}:1: no column \"{n}\" (columns: {})",
                header.join(", ")
            )
        })
    };
    let mut t = VoteTable::default();
    let mut item_ix: HashMap<String, usize> = HashMap::new();
    let mut ann_ix: HashMap<String, u32> = HashMap::new();
    let mut lab_ix: HashMap<String, u32> = HashMap::new();
    let missing = |v: &str| c.missing.iter().any(|m| m == v);
    let intern = |map: &mut HashMap<String, u32>, list: &mut Vec<String>, v: &str| -> u32 {
        *map.entry(v.to_string()).or_insert_with(|| {
            list.push(v.to_string());
            (list.len() - 1) as u32
        })
    };
    let text_col = match &c.text_column {
        Some(n) => Some(col(n)?),
        None => None,
    };
    match c.format {
        VoteFormat::Long => {
            let (ic, ac, lc) = (
                col(&c.item_column)?,
                col(&c.annotator_column)?,
                col(&c.label_column)?,
            );
            for (ln, line) in lines {
                let f = split_line(line, tsv, csv);
                let get = |i: usize| -> Result<&str, String> {
                    f.get(i).map(String::as_str).ok_or_else(|| {
                        format!(
                            "{shown}:{}: expected {} columns, found {}",
                            ln + 1,
                            header.len(),
                            f.len()
                        )
                    })
                };
                let item = get(ic)?.to_string();
                let idx = match item_ix.get(&item) {
                    Some(&i) => i,
                    None => {
                        item_ix.insert(item.clone(), t.items.len());
                        t.items.push(item.clone());
                        t.texts.push(match text_col {
                            Some(tc) => get(tc)?.to_string(),
                            None => item.clone(),
                        });
                        t.votes.push(Vec::new());
                        t.items.len() - 1
                    }
                };
                let (a, l) = (get(ac)?, get(lc)?);
                if missing(l) {
                    continue;
                }
                let a = intern(&mut ann_ix, &mut t.annotators, a);
                let l = intern(&mut lab_ix, &mut t.labels, l);
                t.votes[idx].push((a, l));
            }
        }
        VoteFormat::Wide => {
            let item_col = if c.no_header {
                None
            } else {
                header.iter().position(|h| *h == c.item_column)
            };
            let ann_cols: Vec<usize> = if c.no_header {
                Vec::new()
            } else {
                (0..header.len())
                    .filter(|i| Some(*i) != item_col && Some(*i) != text_col)
                    .collect()
            };
            if !c.no_header {
                for &i in &ann_cols {
                    intern(&mut ann_ix, &mut t.annotators, &header[i]);
                }
            }
            for (n, (ln, line)) in lines.enumerate() {
                let f = split_line(line, tsv, csv);
                let cols: Vec<usize> = if c.no_header {
                    while t.annotators.len() < f.len() {
                        let name = t.annotators.len().to_string();
                        intern(&mut ann_ix, &mut t.annotators, &name);
                    }
                    (0..f.len()).collect()
                } else {
                    if f.len() != header.len() {
                        return Err(format!(
                            "{shown}:{}: expected {} columns, found {}",
                            ln + 1,
                            header.len(),
                            f.len()
                        ));
                    }
                    ann_cols.clone()
                };
                let item = item_col
                    .map(|i| f[i].clone())
                    .unwrap_or_else(|| format!("item-{n}"));
                t.texts.push(
                    text_col
                        .map(|i| f[i].clone())
                        .unwrap_or_else(|| item.clone()),
                );
                t.items.push(item);
                let mut vs = Vec::new();
                for (k, &i) in cols.iter().enumerate() {
                    let v = f[i].as_str();
                    if missing(v) {
                        continue;
                    }
                    let a = if c.no_header {
                        k as u32
                    } else {
                        ann_ix[&header[i]]
                    };
                    vs.push((a, intern(&mut lab_ix, &mut t.labels, v)));
                }
                t.votes.push(vs);
            }
        }
    }
    if t.labels.len() < 2 {
        return Err(format!("{shown}: the votes use fewer than two labels"));
    }
    Ok(t)
}

pub struct Votes;

impl NodeKind for Votes {
    type Config = VotesConfig;
    const KIND: &'static str = "votes";
    const VERSION: &'static str = "2";
    const ABOUT: &'static str = "Aggregates several annotators' votes (majority or Dawid-Skene); unclear rows become two-candidate flags";

    fn outputs(_: &VotesConfig) -> Vec<String> {
        vec!["dataset".into(), "flags".into(), "agreement".into()]
    }

    fn files(c: &VotesConfig) -> Vec<PathBuf> {
        if c.in_input {
            return Vec::new();
        }
        std::iter::once(c.file.clone())
            .chain(c.labels.iter().cloned())
            .collect()
    }

    fn check(c: &VotesConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        p.extend(crate::inputs::require_data_input(c.in_input, inputs));
        if !(0.0..=1.0).contains(&c.min_margin) {
            p.push(ConfigProblem::new(
                CfgPath::root().key("min_margin"),
                format!("must be between 0 and 1; found {}", c.min_margin),
            ));
        }
        if c.max_iterations == 0 {
            p.push(ConfigProblem::new(
                CfgPath::root().key("max_iterations"),
                "must be at least 1",
            ));
        }
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: VotesConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let fail = NodeError::Failed;
        let at = |p: &Path| crate::inputs::config_path(&ctx, &inputs, c.in_input, p);
        let t = read_votes(&at(&c.file), &c.file, &c).map_err(fail)?;
        let t0 = std::time::Instant::now();
        let agg = match c.method {
            Aggregation::Majority => majority(&t),
            Aggregation::DawidSkene => dawid_skene(&t, c.max_iterations, c.tolerance),
        };
        let seconds = t0.elapsed().as_secs_f64();
        // The label set: the spec's order when given (every voted label must be in it).
        let spec = match &c.labels {
            Some(p) => LabelSpec::load(&at(p)).map_err(fail)?,
            None => {
                let mut names = t.labels.clone();
                names.sort();
                LabelSpec::from_names(names)
            }
        };
        let to_spec: Vec<u32> = t
            .labels
            .iter()
            .map(|l| {
                spec.index(l).ok_or_else(|| {
                    format!(
                        "{}: label \"{l}\" is not in the label spec",
                        c.file.display()
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let mut split = Split::default();
        let mut out_flags = Vec::new();
        let mut agreement_sum = 0f64;
        let mut unanimous = 0usize;
        let mut per_row = String::new();
        for (i, p) in agg.posterior.iter().enumerate() {
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|a, b| p[*b].total_cmp(&p[*a]).then(a.cmp(b)));
            let (best, second) = (order[0], order[1]);
            split.ids.push(t.items[i].clone());
            split.texts.push(t.texts[i].clone());
            split.labels.push(to_spec[best]);
            let n = t.votes[i].len();
            let agree = t.votes[i]
                .iter()
                .filter(|(_, l)| *l as usize == best)
                .count();
            if n > 0 {
                agreement_sum += agree as f64 / n as f64;
                unanimous += usize::from(agree == n);
            }
            per_row.push_str(
                &json!({"id": t.items[i], "label": t.labels[best], "votes": n, "agreeing": agree,
                    "agreement": if n == 0 { 0.0 } else { agree as f64 / n as f64 },
                    "probability": p[best], "runner_up": t.labels[second], "runner_up_probability": p[second]})
                .to_string(),
            );
            per_row.push('\n');
            if p[best] - p[second] < c.min_margin {
                out_flags.push(Flag {
                    split: "train".into(),
                    row: i,
                    id: t.items[i].clone(),
                    text: t.texts[i].clone(),
                    label: t.labels[best].clone(),
                    candidate: t.labels[second].clone(),
                    label_prob: p[best] as f32,
                    candidate_prob: p[second] as f32,
                    score: 1.0 - (p[best] - p[second]),
                    rule: "votes_unclear".into(),
                    site: serde_json::Value::Null,
                });
            }
        }
        out_flags.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
        let (out, fl) = crate::outputs::write_train_and_flags(&ctx, spec, split, &out_flags)?;
        let ag = ctx.output_path("agreement");
        std::fs::write(&ag, per_row).map_err(|e| NodeError::io("writing agreement", e))?;
        let items = t.items.len().max(1) as f64;
        let acc: BTreeMap<String, f64> = t
            .annotators
            .iter()
            .cloned()
            .zip(agg.annotator_accuracy.iter().copied())
            .collect();
        let mut m = Metrics::new();
        m.insert("items".into(), json!(t.items.len()));
        m.insert("annotators".into(), json!(t.annotators.len()));
        m.insert(
            "votes".into(),
            json!(t.votes.iter().map(Vec::len).sum::<usize>()),
        );
        m.insert("method".into(), json!(c.method));
        m.insert("iterations".into(), json!(agg.iterations));
        m.insert("seconds".into(), json!(seconds));
        m.insert("annotator_accuracy".into(), json!(acc));
        m.insert("mean_agreement".into(), json!(agreement_sum / items));
        m.insert("unanimous_fraction".into(), json!(unanimous as f64 / items));
        m.insert("flags".into(), json!(out_flags.len()));
        Ok(NodeOutput {
            outputs: [
                ("dataset".to_string(), out),
                ("flags".to_string(), fl),
                ("agreement".to_string(), ag),
            ]
            .into(),
            metrics: m,
        })
    }
}
