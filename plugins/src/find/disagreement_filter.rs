//! The `disagreement_filter` node kind: flags rows whose label the model disputes, ranked, under a budget.
//!
//! Rules: the paper's `pred_neq_label`, thresholds on loss, self-confidence and margin, and
//! confident learning (Northcutt et al.; as cleanlab defines it: per-class thresholds, the
//! confident joint, `prune_by_noise_rate`, `prune_by_class`, `both`).

use std::collections::BTreeMap;

use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::Dataset;
use crate::flags::{self, Flag};
use crate::predictions::SplitPredictions;

/// Confident learning's ways of choosing which rows to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClMethod {
    /// For each off-diagonal cell (i, j) of the confident joint, the rows labelled i with the
    /// largest margin p_j - p_i, as many as the cell counts.
    PruneByNoiseRate,
    /// For each class i, the rows labelled i with the lowest p_i, as many as row i's off-diagonal total.
    PruneByClass,
    /// Rows both methods choose.
    Both,
}

/// One way a row can be flagged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The model's prediction differs from the label (the paper's rule).
    PredNeqLabel,
    /// Cross-entropy of the label above this.
    LossAbove(f32),
    /// Probability of the label below this.
    SelfConfidenceBelow(f32),
    /// p(label) - max p(other) below this.
    MarginBelow(f32),
    ConfidentLearning(ClMethod),
}

impl Rule {
    pub fn name(&self) -> String {
        match self {
            Rule::PredNeqLabel => "pred_neq_label".into(),
            Rule::LossAbove(x) => format!("loss_above {x}"),
            Rule::SelfConfidenceBelow(x) => format!("self_confidence_below {x}"),
            Rule::MarginBelow(x) => format!("margin_below {x}"),
            Rule::ConfidentLearning(m) => format!(
                "confident_learning {}",
                serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// A row is flagged when any rule fires.
    #[default]
    Any,
    /// A row is flagged when every rule fires.
    All,
}

/// How flags are ordered (the budget keeps the top ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RankBy {
    /// Lowest probability of the given label first.
    #[default]
    SelfConfidence,
    /// Lowest p(label) - max p(other) first.
    NormalizedMargin,
    /// Highest cross-entropy first.
    Loss,
    /// Generation: farthest output from the target first (1 - sentence chrF / 100, plus the
    /// share of a record's slots the output covers and the target does not).
    Distance,
}

/// How many flags a round may have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// `max_fraction` of the flagged splits' rows.
    #[default]
    Fixed,
    /// The number of label issues confident learning estimates (the off-diagonal mass of the
    /// calibrated confident joint, as cleanlab's `num_label_issues` counts it), capped by
    /// `max_fraction`: 10% noise is not over-flagged, and the cap bounds the judge's work.
    Estimated,
}

fn d_rules() -> Vec<Rule> {
    vec![Rule::PredNeqLabel]
}
fn d_fraction() -> f64 {
    0.1
}
fn d_splits() -> Vec<String> {
    vec!["train".into(), "dev".into()]
}

/// Config of a `disagreement_filter` node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// e.g. `[pred_neq_label, {loss_above: 2.0}, {confident_learning: prune_by_noise_rate}]`.
    #[serde(
        default = "d_rules",
        with = "serde_yaml::with::singleton_map_recursive"
    )]
    #[schemars(with = "Vec<Rule>")]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub combine: Combine,
    #[serde(default)]
    pub rank_by: RankBy,
    /// Most flags, as a fraction of the rows of the flagged splits (the paper: about 2-10%).
    #[serde(default = "d_fraction")]
    pub max_fraction: f64,
    /// `fixed` (`max_fraction` of the rows) or `estimated` (the estimated number of label
    /// errors, at most `max_fraction`; classification only).
    #[serde(default)]
    pub budget: Budget,
    /// Most flags per (given) class, as a fraction of that class's rows.
    #[serde(default)]
    pub per_class_max_fraction: Option<f64>,
    /// Flags kept for each class before the rest of the budget goes by rank (when the rules flagged that many).
    #[serde(default)]
    pub per_class_min: usize,
    /// Splits to flag; never the fixed test split.
    #[serde(default = "d_splits")]
    pub splits: Vec<String>,
    /// The paper's section 4.4 variant: every row becomes a flag (candidates: its label and
    /// the model's best other label), rules ignored. Off by default: the paper found it hurts
    /// easy rows, which a judge then sometimes flips.
    #[serde(default)]
    pub all_rows: bool,
    /// Tagging: how span disputes are ranked (`worst_token`, `softmin` or `margin`).
    #[serde(default)]
    pub span_score: relabel_tasks::tagging::SpanScore,
    /// Leave out rows whose pair {label, candidate} a judge has already decided (the judged
    /// pairs an `apply_labels` records in the dataset version it writes), so the budget goes to
    /// new questions: a temperature-0 LLM, or a person, answers a repeated question the same way.
    /// Off by default: on Banking77 the freed budget went mostly to clean rows, which an
    /// imperfect judge then sometimes corrupted (docs/BENCHMARKS.md, quality).
    #[serde(default)]
    pub skip_judged: bool,
    /// Second candidates: when a judge kept a row's label against the model's best other class,
    /// a later round offers the next most probable class not yet judged against that label (a
    /// new pair), up to this many classes past the first; a row with every such pair judged is
    /// left out. 0 (the default): no second candidates. Above 0 implies `skip_judged`.
    /// Classification only.
    #[serde(default)]
    pub next_candidates: usize,
}

impl FilterConfig {
    /// Whether already-judged pairs are left out (or replaced by a next candidate).
    pub fn skips_judged(&self) -> bool {
        self.skip_judged || self.next_candidates > 0
    }
}

/// What a row may be asked, given the pairs a judge already decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Its label against the model's best other class (the default).
    Best,
    /// Its label against this class: the best one not yet judged against the label.
    Next(u32),
    /// Nothing: every pair it could be offered was judged.
    Skip,
}

/// Per-class thresholds: the mean predicted probability of class j over rows labelled j.
pub fn thresholds(p: &SplitPredictions) -> Vec<f32> {
    use rayon::prelude::*;
    let c = p.classes;
    let (sum, n) = (0..p.rows())
        .into_par_iter()
        .with_min_len(1 << 16)
        .fold(
            || (vec![0f64; c], vec![0usize; c]),
            |(mut sum, mut n), i| {
                let l = p.label[i] as usize;
                sum[l] += p.label_prob[i] as f64;
                n[l] += 1;
                (sum, n)
            },
        )
        .reduce(
            || (vec![0f64; c], vec![0usize; c]),
            |(mut a, mut an), (b, bn)| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                an.iter_mut().zip(bn).for_each(|(x, y)| *x += y);
                (a, an)
            },
        );
    (0..c)
        .map(|j| {
            if n[j] == 0 {
                1.0
            } else {
                (sum[j] / n[j] as f64) as f32
            }
        })
        .collect()
}

/// The confident joint, calibrated to the label counts and rounded keeping row totals:
/// `cj[i][j]` estimates how many rows labelled i truly belong to j.
pub fn confident_joint(p: &SplitPredictions) -> Vec<Vec<usize>> {
    use rayon::prelude::*;
    let c = p.classes;
    let t: Vec<f32> = thresholds(p).iter().map(|x| x - 1e-6).collect();
    let chunk = 16_384;
    // Counts per row chunk, in parallel, then summed: (raw joint, label counts).
    let (raw, counts) = (0..p.rows())
        .collect::<Vec<_>>()
        .par_chunks(chunk)
        .map(|rows| {
            let mut raw = vec![0f64; c * c];
            let mut counts = vec![0f64; c];
            for &i in rows {
                let row = p.row(i);
                let given = p.label[i] as usize;
                counts[given] += 1.0;
                // Max over above-threshold entries in 8 lanes (vectorises), then its first position.
                let mut lanes = [-1.0f32; 8];
                let mut chunks = row.chunks_exact(8).zip(t.chunks_exact(8));
                for (xs, ts) in &mut chunks {
                    for l in 0..8 {
                        let v = if xs[l] >= ts[l] { xs[l] } else { -1.0 };
                        lanes[l] = if v > lanes[l] { v } else { lanes[l] };
                    }
                }
                let tail = row.len() - row.len() % 8;
                let mut best_p = lanes
                    .iter()
                    .fold(-1.0f32, |a, &b| if b > a { b } else { a });
                for (&x, &tj) in row[tail..].iter().zip(&t[tail..]) {
                    if x >= tj && x > best_p {
                        best_p = x;
                    }
                }
                let best = if best_p < 0.0 {
                    usize::MAX
                } else {
                    row.iter()
                        .zip(&t)
                        .position(|(&x, &tj)| x >= tj && x == best_p)
                        .unwrap_or(usize::MAX)
                };
                if best != usize::MAX {
                    raw[given * c + best] += 1.0;
                }
            }
            (raw, counts)
        })
        .reduce(
            || (vec![0f64; c * c], vec![0f64; c]),
            |(mut a, mut ac), (b, bc)| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                ac.iter_mut().zip(bc).for_each(|(x, y)| *x += y);
                (a, ac)
            },
        );
    let mut cj = vec![vec![0usize; c]; c];
    for i in 0..c {
        let raw_i = &raw[i * c..(i + 1) * c];
        let total: f64 = raw_i.iter().sum();
        if total == 0.0 {
            cj[i][i] = counts[i] as usize;
            continue;
        }
        // Scale row i to the number of rows labelled i; round keeping the row total.
        let scaled: Vec<f64> = raw_i.iter().map(|x| x / total * counts[i]).collect();
        let mut floors: Vec<usize> = scaled.iter().map(|x| x.floor() as usize).collect();
        let missing = (counts[i] as usize).saturating_sub(floors.iter().sum::<usize>());
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| {
            (scaled[b] - scaled[b].floor())
                .partial_cmp(&(scaled[a] - scaled[a].floor()))
                .expect("finite")
                .then(a.cmp(&b))
        });
        for &j in order.iter().take(missing) {
            floors[j] += 1;
        }
        cj[i] = floors;
    }
    cj
}

/// The number of label issues confident learning estimates in `p`: the off-diagonal mass of
/// the calibrated confident joint.
pub fn estimated_issues(p: &SplitPredictions) -> usize {
    let cj = confident_joint(p);
    cj.iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, n)| n)
                .sum::<usize>()
        })
        .sum()
}

/// The number of flags `cfg` allows over `splits`, and the estimate it came from (for
/// `budget: estimated`).
pub fn budget_for(
    splits: &[(&str, &SplitPredictions)],
    cfg: &FilterConfig,
) -> (usize, Option<usize>) {
    let total: usize = splits.iter().map(|(_, p)| p.rows()).sum();
    let cap = (cfg.max_fraction * total as f64).floor() as usize;
    match cfg.budget {
        Budget::Fixed => (cap, None),
        Budget::Estimated => {
            let est: usize = splits.iter().map(|(_, p)| estimated_issues(p)).sum();
            (cap.min(est), Some(est))
        }
    }
}

/// The clicks of CTR splits.
fn clicks(splits: &[(&str, &SplitPredictions)]) -> usize {
    splits
        .iter()
        .map(|(_, p)| {
            p.label
                .iter()
                .filter(|&&y| y == relabel_tasks::ctr::CLICK)
                .count()
        })
        .sum()
}

/// CTR's budget: `max_fraction` of the clicks; `estimated`: at most the clicks confident
/// learning counts as confidently no-click (the confident joint's click -> no-click cell).
pub fn ctr_budget(
    splits: &[(&str, &SplitPredictions)],
    cfg: &FilterConfig,
) -> (usize, Option<usize>) {
    let cap = (cfg.max_fraction * clicks(splits) as f64).floor() as usize;
    match cfg.budget {
        Budget::Fixed => (cap, None),
        Budget::Estimated => {
            let est: usize = splits
                .iter()
                .map(|(_, p)| confident_joint(p)[relabel_tasks::ctr::CLICK as usize][0])
                .sum();
            (cap.min(est), Some(est))
        }
    }
}

/// The `k` (value, row) pairs with the largest values, ties to the lower row; unordered.
fn largest(mut xs: Vec<(f32, u32)>, k: usize) -> Vec<(f32, u32)> {
    let k = k.min(xs.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp =
        |a: &(f32, u32), b: &(f32, u32)| b.0.partial_cmp(&a.0).expect("finite").then(a.1.cmp(&b.1));
    if k < xs.len() {
        xs.select_nth_unstable_by(k - 1, cmp);
        xs.truncate(k);
    }
    xs
}

/// A heap entry ordered so that the heap's top is the weakest kept margin (smallest margin,
/// then the larger row: ties keep the lower row).
#[derive(PartialEq)]
struct Kept(f32, u32);

impl Eq for Kept {}

impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kept {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// Prune by noise rate: for every class i and every other class j, the `cj[i][j]` rows labelled
/// i with the largest margin p_j - p_i (ties keep the lower row).
///
/// One sequential pass over the rows (prefetch-friendly), split into one chunk per thread; each
/// chunk keeps a bounded heap per (i, j) cell and the margin a row must beat to enter it; the
/// chunks' heaps are then merged per cell.
fn noise_rate_marks(p: &SplitPredictions, cj: &[Vec<usize>]) -> Vec<bool> {
    use rayon::prelude::*;
    let c = p.classes;
    let n = p.rows();
    let chunks = rayon::current_num_threads().max(1);
    let per = n.div_ceil(chunks).max(1);
    let cap: Vec<usize> = (0..c * c)
        .map(|ij| {
            if ij / c == ij % c {
                0
            } else {
                cj[ij / c][ij % c]
            }
        })
        .collect();
    let bars = entry_bars(p, &cap);
    let parts: Vec<Vec<std::collections::BinaryHeap<Kept>>> = (0..chunks)
        .into_par_iter()
        .map(|k| {
            let (lo, hi) = (k * per, ((k + 1) * per).min(n));
            let mut heaps: Vec<std::collections::BinaryHeap<Kept>> = cap
                .iter()
                .map(|&k| std::collections::BinaryHeap::with_capacity(k.min(1024) + 1))
                .collect();
            let mut mins = bars.clone();
            for r in lo..hi {
                let i = p.label[r] as usize;
                let row = p.row(r);
                let o = row[i];
                let mins_i = &mut mins[i * c..(i + 1) * c];
                // Most rows enter no heap: a vectorisable test first (the largest excess of a
                // margin over its cell's entry bar, in 8 lanes).
                let mut best = [f32::NEG_INFINITY; 8];
                for (xs, ms) in row.chunks_exact(8).zip(mins_i.chunks_exact(8)) {
                    for l in 0..8 {
                        let e = xs[l] - o - ms[l];
                        best[l] = if e > best[l] { e } else { best[l] };
                    }
                }
                let tail = row.len() - row.len() % 8;
                let any = best.iter().any(|&e| e > 0.0)
                    || row[tail..]
                        .iter()
                        .zip(&mins_i[tail..])
                        .any(|(&x, &m)| x - o > m);
                if !any {
                    continue;
                }
                for (j, (&x, min)) in row.iter().zip(mins_i.iter_mut()).enumerate() {
                    let margin = x - o;
                    if margin > *min {
                        let cell = i * c + j;
                        let heap = &mut heaps[cell];
                        heap.push(Kept(margin, r as u32));
                        if heap.len() > cap[cell] {
                            heap.pop();
                        }
                        if heap.len() == cap[cell] {
                            *min = heap.peek().map(|t| t.0).unwrap_or(f32::NEG_INFINITY);
                        }
                    }
                }
            }
            heaps
        })
        .collect();
    let mut mark = vec![false; n];
    let mut parts = parts;
    for cell in 0..c * c {
        if cap[cell] == 0 {
            continue;
        }
        let mut all: Vec<(f32, u32)> = parts
            .iter_mut()
            .flat_map(|h| {
                std::mem::take(&mut h[cell])
                    .into_iter()
                    .map(|Kept(m, r)| (m, r))
            })
            .collect();
        if parts.len() > 1 {
            all = largest(all, cap[cell]);
        }
        for (_, r) in all {
            mark[r as usize] = true;
        }
    }
    mark
}

/// Per cell, a margin every row of the final top-k beats: just below the k-th largest margin
/// among every 16th row (the full set has at least k rows at or above it). Rows under it never
/// touch a heap, which saves most heap pushes; cells with fewer sampled rows get -inf, and
/// empty cells +inf.
fn entry_bars(p: &SplitPredictions, cap: &[usize]) -> Vec<f32> {
    use rayon::prelude::*;
    let c = p.classes;
    let mut sampled: Vec<Vec<u32>> = vec![Vec::new(); c];
    for r in (0..p.rows()).step_by(16) {
        sampled[p.label[r] as usize].push(r as u32);
    }
    sampled
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, rows)| {
            let mut margins = vec![0f32; rows.len()];
            (0..c)
                .map(|j| {
                    let k = cap[i * c + j];
                    if k == 0 {
                        return f32::INFINITY;
                    }
                    if rows.len() < k {
                        return f32::NEG_INFINITY;
                    }
                    for (m, &r) in margins.iter_mut().zip(rows) {
                        let row = p.row(r as usize);
                        *m = row[j] - row[i];
                    }
                    let (_, kth, _) = margins.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
                    kth.next_down()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Rows confident learning selects as label issues.
pub fn confident_learning(p: &SplitPredictions, method: ClMethod) -> Vec<bool> {
    use rayon::prelude::*;
    let c = p.classes;
    let n = p.rows();
    let cj = confident_joint(p);
    // Prune by class: per class, the rows with the lowest self-probability, as many as the
    // class's off-diagonal counts.
    let by_class = || {
        let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); c];
        for i in 0..n {
            by_class[p.label[i] as usize].push(i as u32);
        }
        let chosen: Vec<Vec<u32>> = (0..c)
            .into_par_iter()
            .map(|i| {
                let rows = &by_class[i];
                let k: usize = (0..c).filter(|&j| j != i).map(|j| cj[i][j]).sum();
                let neg: Vec<(f32, u32)> = rows
                    .iter()
                    .map(|&r| (-p.label_prob[r as usize], r))
                    .collect();
                largest(neg, k).into_iter().map(|(_, r)| r).collect()
            })
            .collect();
        let mut mark = vec![false; n];
        for rows in chosen {
            for r in rows {
                mark[r as usize] = true;
            }
        }
        mark
    };
    match method {
        ClMethod::PruneByNoiseRate => noise_rate_marks(p, &cj),
        ClMethod::PruneByClass => by_class(),
        ClMethod::Both => noise_rate_marks(p, &cj)
            .into_iter()
            .zip(by_class())
            .map(|(a, b)| a && b)
            .collect(),
    }
}

/// A row's candidate label: the prediction, or the runner-up when the prediction is the label.
fn candidate(p: &SplitPredictions, i: usize) -> usize {
    let given = p.label[i] as usize;
    if p.predicted[i] as usize != given {
        p.predicted[i] as usize
    } else {
        best_other(p.row(i), given).0
    }
}

/// The task's best other class (label specs have at least two classes).
fn best_other(row: &[f32], given: usize) -> (usize, f32) {
    relabel_tasks::classification::Classification::best_other(row, given as u32)
        .map_or((given, 0.0), |(k, q)| (k as usize, q))
}

/// The suspicion score of a row under a ranking (higher: more suspicious).
pub fn score(p: &SplitPredictions, i: usize, rank: RankBy) -> f64 {
    score_against(p, i, rank, None)
}

/// [`score`], with the margin taken against class `other` instead of the best other class.
fn score_against(p: &SplitPredictions, i: usize, rank: RankBy, other: Option<usize>) -> f64 {
    let given = p.label[i] as usize;
    let row = p.row(i);
    match rank {
        RankBy::SelfConfidence => 1.0 - p.label_prob[i] as f64,
        RankBy::NormalizedMargin => {
            let q = other.map_or_else(|| best_other(row, given).1, |k| row[k]);
            (1.0 - (row[given] - q) as f64) / 2.0
        }
        RankBy::Loss => p.loss[i] as f64,
        // Generation only (refused for other tasks by the node's checks): no classes.
        RankBy::Distance => p.loss[i] as f64,
    }
}

/// The classes a row may be offered against its label, most probable first: the model's best
/// other class, then up to `depth` more.
fn offer_order(p: &SplitPredictions, i: usize, depth: usize) -> Vec<usize> {
    let given = p.label[i] as usize;
    let first = candidate(p, i);
    let mut out = vec![first];
    if depth > 0 {
        let row = p.row(i);
        let mut rest: Vec<usize> = (0..p.classes)
            .filter(|&k| k != given && k != first)
            .collect();
        rest.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        out.extend(rest.into_iter().take(depth));
    }
    out
}

/// For each row, the first rule (index into `rules`) that fired, under `combine`.
pub fn fired(p: &SplitPredictions, rules: &[Rule], combine: Combine) -> Vec<Option<usize>> {
    let per_rule: Vec<Vec<bool>> = rules
        .iter()
        .map(|r| match *r {
            Rule::PredNeqLabel => (0..p.rows())
                .map(|i| p.predicted[i] != p.label[i])
                .collect(),
            Rule::LossAbove(x) => p.loss.iter().map(|&l| l > x).collect(),
            Rule::SelfConfidenceBelow(x) => p.label_prob.iter().map(|&q| q < x).collect(),
            Rule::MarginBelow(x) => (0..p.rows())
                .map(|i| {
                    let g = p.label[i] as usize;
                    p.row(i)[g] - best_other(p.row(i), g).1 < x
                })
                .collect(),
            Rule::ConfidentLearning(m) => confident_learning(p, m),
        })
        .collect();
    (0..p.rows())
        .map(|i| match combine {
            Combine::Any => per_rule.iter().position(|f| f[i]),
            Combine::All => (!per_rule.is_empty() && per_rule.iter().all(|f| f[i])).then_some(0),
        })
        .collect()
}

/// A row that may be flagged, before the budget.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub split: usize,
    pub row: usize,
    pub class: usize,
    pub score: f64,
    pub rule: std::sync::Arc<str>,
}

/// Keeps the top candidates under the budget: `per_class_min` first for each class, then by
/// rank, never more than a class's cap. Order: score descending, then split, then row.
pub fn select(
    mut cands: Vec<Candidate>,
    budget: usize,
    class_rows: &[usize],
    cfg: &FilterConfig,
) -> Vec<Candidate> {
    {
        use rayon::slice::ParallelSliceMut;
        cands.par_sort_unstable_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.split.cmp(&b.split))
                .then(a.row.cmp(&b.row))
        });
    }
    let caps: Vec<usize> = class_rows
        .iter()
        .map(|&n| {
            cfg.per_class_max_fraction
                .map(|f| (f * n as f64).floor() as usize)
                .unwrap_or(usize::MAX)
        })
        .collect();
    let mut taken = vec![false; cands.len()];
    let mut per_class = vec![0usize; class_rows.len()];
    let mut out = 0;
    if cfg.per_class_min > 0 {
        for (k, c) in cands.iter().enumerate() {
            if out == budget {
                break;
            }
            if per_class[c.class] < cfg.per_class_min.min(caps[c.class]) {
                taken[k] = true;
                per_class[c.class] += 1;
                out += 1;
            }
        }
    }
    for (k, c) in cands.iter().enumerate() {
        if out == budget {
            break;
        }
        if !taken[k] && per_class[c.class] < caps[c.class] {
            taken[k] = true;
            per_class[c.class] += 1;
            out += 1;
        }
    }
    cands
        .into_iter()
        .zip(taken)
        .filter(|(_, t)| *t)
        .map(|(c, _)| c)
        .collect()
}

/// Flags rows of `splits` (name, predictions) under `cfg`; returns the chosen candidates in rank order.
pub fn filter(splits: &[(&str, &SplitPredictions)], cfg: &FilterConfig) -> Vec<Candidate> {
    let (budget, _) = budget_for(splits, cfg);
    filter_within(splits, cfg, &[], budget)
}

/// [`filter`] with the number of flags given and each row's [`Offer`] in `offers` (per split;
/// an empty or short list offers the best other class there).
fn filter_within(
    splits: &[(&str, &SplitPredictions)],
    cfg: &FilterConfig,
    offers: &[Vec<Offer>],
    budget: usize,
) -> Vec<Candidate> {
    let classes = splits.first().map(|(_, p)| p.classes).unwrap_or(0);
    let rule_names: Vec<std::sync::Arc<str>> = cfg.rules.iter().map(|r| r.name().into()).collect();
    let all_rows_name: std::sync::Arc<str> = "all_rows".into();
    let all_name: std::sync::Arc<str> = "all".into();
    let mut cands = Vec::new();
    let mut class_rows = vec![0usize; classes];
    let mut total = 0;
    for (s, (_, p)) in splits.iter().enumerate() {
        total += p.rows();
        for &l in &p.label {
            class_rows[l as usize] += 1;
        }
        let fired = if cfg.all_rows {
            vec![Some(usize::MAX); p.rows()]
        } else {
            fired(p, &cfg.rules, cfg.combine)
        };
        {
            use rayon::prelude::*;
            // Scores in parallel; the rule names (shared, reference-counted) attached after, on
            // one thread, so the count is not contended.
            let made: Vec<(usize, usize, f64)> = fired
                .into_par_iter()
                .enumerate()
                .with_min_len(1 << 14)
                .filter_map(|(i, f)| {
                    let offer = offers.get(s).and_then(|m| m.get(i)).copied();
                    let other = match offer {
                        Some(Offer::Skip) => return None,
                        Some(Offer::Next(k)) => Some(k as usize),
                        Some(Offer::Best) | None => None,
                    };
                    f.map(|r| (i, r, score_against(p, i, cfg.rank_by, other)))
                })
                .collect();
            cands.reserve(made.len());
            let made = made.into_iter().map(|(i, r, score)| Candidate {
                split: s,
                row: i,
                class: p.label[i] as usize,
                score,
                rule: match (cfg.all_rows, cfg.combine) {
                    (true, _) => all_rows_name.clone(),
                    (false, Combine::All) => all_name.clone(),
                    (false, Combine::Any) => rule_names[r].clone(),
                },
            });
            cands.extend(made);
        }
    }
    debug_assert!(budget <= total);
    select(cands, budget, &class_rows, cfg)
}

/// The `disagreement_filter` node kind.
pub struct DisagreementFilter;

impl NodeKind for DisagreementFilter {
    type Config = FilterConfig;
    const KIND: &'static str = "disagreement_filter";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str = "Flags rows whose label the model disputes (prediction != label, loss, confidence, margin, confident learning), ranked, under a budget.";

    fn outputs(_: &FilterConfig) -> Vec<String> {
        vec!["flags".into()]
    }

    fn check(c: &FilterConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let r = Path::root();
        let mut p = Vec::new();
        if !(c.max_fraction > 0.0 && c.max_fraction <= 1.0) {
            p.push(ConfigProblem::new(
                r.key("max_fraction"),
                "must be above 0 and at most 1",
            ));
        }
        if let Some(f) = c.per_class_max_fraction {
            if !(f > 0.0 && f <= 1.0) {
                p.push(ConfigProblem::new(
                    r.key("per_class_max_fraction"),
                    "must be above 0 and at most 1",
                ));
            }
        }
        if c.rules.is_empty() && !c.all_rows {
            p.push(ConfigProblem::new(
                r.key("rules"),
                "give at least one rule (or `all_rows: true`)",
            ));
        }
        for (i, s) in c.splits.iter().enumerate() {
            if let Err(e) = relabel_tasks::data::relabelable(s) {
                p.push(
                    ConfigProblem::new(r.key("splits").index(i), e.to_string())
                        .with_hint(Some("flag train and dev only".into())),
                );
            } else if s != "train" && s != "dev" {
                p.push(ConfigProblem::new(
                    r.key("splits").index(i),
                    format!("unknown split \"{s}\"; expected train or dev"),
                ));
            }
        }
        p.extend(crate::inputs::require_inputs(
            inputs,
            &["predictions", "dataset"],
            "{predictions: predict.predictions, dataset: data.dataset}",
        ));
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: FilterConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let out = ctx.output_path("flags");
        let pred_dir = inputs["predictions"].path.clone();
        let ds_dir = inputs["dataset"].path.clone();
        let out2 = out.clone();
        let metrics =
            tokio::task::spawn_blocking(move || run_filter(&c, &pred_dir, &ds_dir, &out2))
                .await
                .map_err(|e| NodeError::Failed(e.to_string()))?
                .map_err(NodeError::Failed)?;
        Ok(NodeOutput {
            outputs: [("flags".to_string(), out)].into(),
            metrics,
        })
    }
}

/// The node's work on artifacts on disk: reads predictions and the dataset, writes the flags.
pub fn run_filter(
    c: &FilterConfig,
    pred_dir: &std::path::Path,
    ds_dir: &std::path::Path,
    out: &std::path::Path,
) -> Result<Metrics, String> {
    let ds = Dataset::read(ds_dir).map_err(|e| e.to_string())?;
    let (flags, total, skipped, estimate, next) = match ds.task {
        relabel_tasks::task::TaskKind::Tagging => {
            if c.budget == Budget::Estimated {
                return Err("budget: estimated counts label errors from per-row class probabilities; a tagging dataset uses budget: fixed".into());
            }
            if c.next_candidates > 0 {
                return Err("next_candidates offers a row's next most probable class; a tagging dataset's disputes are spans (use skip_judged)".into());
            }
            let (f, t, s) = span_flags(c, &ds, pred_dir, ds_dir)?;
            (f, t, s, None, None)
        }
        relabel_tasks::task::TaskKind::Detection => {
            if c.budget == Budget::Estimated {
                return Err("budget: estimated counts label errors from per-row class probabilities; a detection dataset uses budget: fixed".into());
            }
            if c.next_candidates > 0 {
                return Err("next_candidates offers a row's next most probable class; a detection dataset's disputes are boxes".into());
            }
            let (f, t, s) = box_flags(c, &ds, pred_dir, ds_dir)?;
            (f, t, s, None, None)
        }
        relabel_tasks::task::TaskKind::Generation => {
            if c.budget == Budget::Estimated {
                return Err("budget: estimated counts label errors from per-row class probabilities; a generation dataset uses budget: fixed".into());
            }
            if c.next_candidates > 0 {
                return Err("next_candidates offers a row's next most probable class; a generation dataset's candidate is the model's output".into());
            }
            let (f, t, s) = output_flags(c, &ds, pred_dir, ds_dir)?;
            (f, t, s, None, None)
        }
        relabel_tasks::task::TaskKind::Classification | relabel_tasks::task::TaskKind::Ctr => {
            if c.rank_by == RankBy::Distance {
                return Err("rank_by: distance ranks generated texts; a classification dataset ranks by self_confidence, normalized_margin or loss".into());
            }
            let r = row_flags(c, &ds, pred_dir, ds_dir)?;
            let next = (c.next_candidates > 0).then_some(r.next);
            (r.flags, r.total, r.skipped, r.estimate, next)
        }
    };
    flags::write(out, &flags).map_err(|e| e.to_string())?;
    let mut m = flag_metrics(&flags, total, skipped)?;
    if let Some(n) = next {
        m.insert("next_candidates_flagged".into(), n.into());
    }
    if let Some(e) = estimate {
        m.insert("estimated_issues".into(), e.into());
        m.insert(
            "estimated_issue_rate".into(),
            (e as f64 / total.max(1) as f64).into(),
        );
    }
    Ok(m)
}

/// The judged pairs of a dataset version as (split, id, sorted pair).
fn judged_set(
    ds_dir: &std::path::Path,
) -> Result<std::collections::HashSet<(String, String, [String; 2])>, String> {
    Ok(crate::data::read_judged(ds_dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|j| {
            let mut pair = j.pair;
            pair.sort();
            (j.split, j.id, pair)
        })
        .collect())
}

/// Generation: the rows whose model output differs from the target (and that the other rules
/// pick: `loss_above`, `self_confidence_below` on the target's mean per-token probability),
/// ranked by `rank_by`, under a budget of `max_fraction` of the rows.
fn output_flags(
    c: &FilterConfig,
    ds: &Dataset,
    pred_dir: &std::path::Path,
    ds_dir: &std::path::Path,
) -> Result<(Vec<Flag>, usize, usize), String> {
    use relabel_tasks::task::Task;
    if let Some(r) = c
        .rules
        .iter()
        .find(|r| matches!(r, Rule::MarginBelow(_) | Rule::ConfidentLearning(_)))
    {
        return Err(format!(
            "rule `{}` reads class probabilities; a generation dataset's rules are pred_neq_label (the output differs from the target), loss_above and self_confidence_below (the target's mean per-token log-probability)",
            r.name()
        ));
    }
    if c.rank_by == RankBy::NormalizedMargin {
        return Err("rank_by: normalized_margin reads class probabilities; a generation dataset ranks by distance, loss or self_confidence".into());
    }
    let judged = if c.skips_judged() {
        judged_set(ds_dir)?
    } else {
        Default::default()
    };
    let task = relabel_tasks::generation::Generation::default();
    let mut found: Vec<(
        &str,
        &crate::data::Split,
        usize,
        relabel_tasks::task::Dispute<()>,
        f32,
    )> = Vec::new();
    let mut cands = Vec::new();
    let (mut total, mut skipped) = (0usize, 0usize);
    for (s, name) in c.splits.iter().enumerate() {
        let Some(split) = ds.split(name) else {
            continue;
        };
        let p = SplitPredictions::read(&pred_dir.join(crate::data::split_file(name)), split, 0)
            .map_err(|e| format!("predictions for {name}: {e}"))?;
        total += split.len();
        for i in 0..split.len() {
            let fired = c.all_rows
                || match c.combine {
                    Combine::Any => c.rules.iter().any(|r| gen_rule(r, &p, i, split)),
                    Combine::All => {
                        !c.rules.is_empty() && c.rules.iter().all(|r| gen_rule(r, &p, i, split))
                    }
                };
            if !fired {
                continue;
            }
            let Some(d) = task
                .disputes(
                    &split.texts[i],
                    &split.targets[i],
                    &p.generated(i),
                    &ds.labels,
                )
                .pop()
            else {
                continue; // the output is the target: nothing to choose between
            };
            let mut pair = d.options.clone();
            pair.sort();
            if judged.contains(&(name.clone(), split.ids[i].clone(), pair)) {
                skipped += 1;
                continue;
            }
            let score = match c.rank_by {
                RankBy::Distance => d.score,
                RankBy::Loss => p.loss[i] as f64,
                _ => 1.0 - p.label_prob[i] as f64,
            };
            cands.push(Candidate {
                split: s,
                row: found.len(),
                class: 0,
                score,
                rule: std::sync::Arc::from("pred_neq_label"),
            });
            found.push((name.as_str(), split, i, d, p.label_prob[i]));
        }
    }
    let budget = (c.max_fraction * total as f64).floor() as usize;
    let flags = select(cands, budget, &[total], c)
        .into_iter()
        .map(|cand| {
            let (name, split, i, d, lp) = &found[cand.row];
            Flag {
                split: name.to_string(),
                row: *i,
                id: split.ids[*i].clone(),
                text: split.texts[*i].clone(),
                label: d.options[0].clone(),
                candidate: d.options[1].clone(),
                label_prob: *lp,
                candidate_prob: f32::NAN,
                score: cand.score,
                rule: cand.rule.to_string(),
                site: serde_json::Value::Null,
            }
        })
        .collect();
    Ok((flags, total, skipped))
}

/// Whether a rule fires on generation row `i`.
fn gen_rule(r: &Rule, p: &SplitPredictions, i: usize, split: &crate::data::Split) -> bool {
    match *r {
        Rule::PredNeqLabel => {
            let norm = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
            norm(&p.outputs[i]) != norm(&split.targets[i])
        }
        Rule::LossAbove(x) => p.loss[i] > x,
        Rule::SelfConfidenceBelow(x) => p.label_prob[i] < x,
        Rule::MarginBelow(_) | Rule::ConfidentLearning(_) => false,
    }
}

/// Tagging: every span dispute of the flagged splits' sentences, ranked by `span_score`, under a
/// budget of `max_fraction` of the sentences; per-class caps count entity types.
fn span_flags(
    c: &FilterConfig,
    ds: &Dataset,
    pred_dir: &std::path::Path,
    ds_dir: &std::path::Path,
) -> Result<(Vec<Flag>, usize, usize), String> {
    if let Some(r) = c.rules.iter().find(|r| **r != Rule::PredNeqLabel) {
        return Err(format!(
            "rule `{}` is a classification rule; a tagging dataset's disputes are the spans where annotated and predicted entities differ (`rules: [pred_neq_label]`), ranked by `span_score`",
            r.name()
        ));
    }
    let judged = if c.skips_judged() {
        judged_set(ds_dir)?
    } else {
        Default::default()
    };
    let mut found = Vec::new();
    let mut cands = Vec::new();
    let mut type_rows = vec![0usize; ds.labels.len()];
    let (mut total, mut skipped) = (0usize, 0usize);
    for (s, name) in c.splits.iter().enumerate() {
        let Some(split) = ds.split(name) else {
            continue;
        };
        let p = SplitPredictions::read(
            &pred_dir.join(crate::data::split_file(name)),
            split,
            ds.prediction_width(),
        )
        .map_err(|e| format!("predictions for {name}: {e}"))?;
        total += split.len();
        for tags in &split.tags {
            for e in relabel_tasks::tagging::entities(tags) {
                type_rows[e.kind as usize] += 1;
            }
        }
        for d in relabel_tasks::rows::tagging_disputes(split, &p, &ds.labels, c.span_score) {
            let mut pair = d.dispute.options.clone();
            pair.sort();
            if judged.contains(&(name.clone(), split.ids[d.row].clone(), pair)) {
                skipped += 1;
                continue;
            }
            cands.push(Candidate {
                split: s,
                row: found.len(),
                class: d.class,
                score: d.dispute.score,
                rule: std::sync::Arc::from("pred_neq_label"),
            });
            found.push((name.as_str(), split, d));
        }
    }
    let budget = (c.max_fraction * total as f64).floor() as usize;
    let flags = select(cands, budget, &type_rows, c)
        .into_iter()
        .map(|cand| {
            let (name, split, d) = &found[cand.row];
            let span: relabel_tasks::tagging::Span =
                serde_json::from_value(d.dispute.site.clone()).expect("a span round-trips");
            Flag {
                split: name.to_string(),
                row: d.row,
                id: split.ids[d.row].clone(),
                text: relabel_tasks::tagging::marked(&split.tokens[d.row], span.start, span.end),
                label: d.dispute.options[0].clone(),
                candidate: d.dispute.options[1].clone(),
                label_prob: d.probs[0],
                candidate_prob: d.probs[1],
                score: d.dispute.score,
                rule: serde_json::to_value(span.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                site: d.dispute.site.clone(),
            }
        })
        .collect();
    Ok((flags, total, skipped))
}

/// Detection: every box disagreement (swap, location, overlooked, spurious) of the splits'
/// images, ranked by its score, under a budget of `max_fraction` of the annotated boxes (at
/// least one per image when an image has none), per-class caps by the box's class.
fn box_flags(
    c: &FilterConfig,
    ds: &Dataset,
    pred_dir: &std::path::Path,
    ds_dir: &std::path::Path,
) -> Result<(Vec<Flag>, usize, usize), String> {
    if let Some(r) = c.rules.iter().find(|r| **r != Rule::PredNeqLabel) {
        return Err(format!(
            "rule `{}` is a classification rule; a detection dataset's disputes are the boxes where annotated and predicted boxes disagree (`rules: [pred_neq_label]`)",
            r.name()
        ));
    }
    let judged = if c.skips_judged() {
        judged_set(ds_dir)?
    } else {
        Default::default()
    };
    let task = relabel_tasks::detection::Detection::default();
    let mut found = Vec::new();
    let mut cands = Vec::new();
    let mut class_boxes = vec![0usize; ds.labels.len()];
    let (mut total, mut skipped) = (0usize, 0usize);
    for (s, name) in c.splits.iter().enumerate() {
        let Some(split) = ds.split(name) else {
            continue;
        };
        let p = SplitPredictions::read_detections(
            &pred_dir.join(crate::data::split_file(name)),
            split,
            &ds.labels,
        )
        .map_err(|e| format!("predictions for {name}: {e}"))?;
        total += split.boxes.iter().map(|b| b.len().max(1)).sum::<usize>();
        for b in split.boxes.iter().flatten() {
            class_boxes[b.class as usize] += 1;
        }
        for d in relabel_tasks::rows::detection_disputes(split, &p, &ds.labels, &task) {
            let mut pair = d.dispute.options.clone();
            pair.sort();
            if judged.contains(&(name.clone(), split.ids[d.row].clone(), pair)) {
                skipped += 1;
                continue;
            }
            cands.push(Candidate {
                split: s,
                row: found.len(),
                class: d.class,
                score: d.dispute.score,
                rule: std::sync::Arc::from("pred_neq_label"),
            });
            found.push((name.as_str(), split, d));
        }
    }
    let budget = (c.max_fraction * total as f64).floor() as usize;
    let flags = select(cands, budget, &class_boxes, c)
        .into_iter()
        .map(|cand| {
            let (name, split, d) = &found[cand.row];
            let site: relabel_tasks::detection::BoxSite =
                serde_json::from_value(d.dispute.site.clone()).expect("a box site round-trips");
            Flag {
                split: name.to_string(),
                row: d.row,
                id: split.ids[d.row].clone(),
                text: split.texts[d.row].clone(),
                label: d.dispute.options[0].clone(),
                candidate: d.dispute.options[1].clone(),
                label_prob: d.probs[0],
                candidate_prob: d.probs[1],
                score: d.dispute.score,
                rule: site.issue.name().to_string(),
                site: d.dispute.site.clone(),
            }
        })
        .collect();
    Ok((flags, total, skipped))
}

/// Classification: rows flagged by the rules, ranked, under the budget; also the estimated
/// number of label issues when the budget is `estimated`.
fn row_flags(
    c: &FilterConfig,
    ds: &Dataset,
    pred_dir: &std::path::Path,
    ds_dir: &std::path::Path,
) -> Result<RowFlags, String> {
    let names = ds.labels.names();
    let mut preds = Vec::new();
    for s in &c.splits {
        let Some(split) = ds.split(s) else { continue };
        let p = SplitPredictions::read(
            &pred_dir.join(crate::data::split_file(s)),
            split,
            names.len(),
        )
        .map_err(|e| format!("predictions for {s}: {e}"))?;
        preds.push((s.as_str(), p));
    }
    let views: Vec<(&str, &SplitPredictions)> = preds.iter().map(|(s, p)| (*s, p)).collect();
    // Rows whose current {label, candidate} pair a judge already decided: left out, or offered
    // their next candidate.
    let judged = if c.skips_judged() {
        crate::data::read_judged(ds_dir).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let mut offers: Vec<Vec<Offer>> = Vec::new();
    let mut skipped = 0usize;
    if !judged.is_empty() {
        let pairs: std::collections::HashSet<(&str, &str, [&str; 2])> = judged
            .iter()
            .map(|j| {
                let mut pair = [j.pair[0].as_str(), j.pair[1].as_str()];
                pair.sort();
                (j.split.as_str(), j.id.as_str(), pair)
            })
            .collect();
        for (split_name, p) in &views {
            let split = ds.split(split_name).expect("split read above");
            let asked = |i: usize, other: usize| {
                let mut pair = [names[p.label[i] as usize], names[other]];
                pair.sort();
                pairs.contains(&(*split_name, split.ids[i].as_str(), pair))
            };
            let row_offers: Vec<Offer> = (0..p.rows())
                .map(|i| {
                    if !asked(i, candidate(p, i)) {
                        return Offer::Best;
                    }
                    match offer_order(p, i, c.next_candidates)
                        .into_iter()
                        .find(|&k| !asked(i, k))
                    {
                        Some(k) => Offer::Next(k as u32),
                        None => Offer::Skip,
                    }
                })
                .collect();
            skipped += row_offers.iter().filter(|x| **x == Offer::Skip).count();
            offers.push(row_offers);
        }
    }
    // CTR: only clicks are disputed (a click the model doubts may be a false positive), and the
    // budget is a fraction of the clicks.
    let ctr = ds.task == relabel_tasks::task::TaskKind::Ctr;
    if ctr {
        if offers.is_empty() {
            offers = views
                .iter()
                .map(|(_, p)| vec![Offer::Best; p.rows()])
                .collect();
        }
        for (o, (_, p)) in offers.iter_mut().zip(&views) {
            for (i, &y) in p.label.iter().enumerate() {
                if y != relabel_tasks::ctr::CLICK {
                    o[i] = Offer::Skip;
                }
            }
        }
    }
    let (budget, estimate) = if ctr {
        ctr_budget(&views, c)
    } else {
        budget_for(&views, c)
    };
    let chosen = filter_within(&views, c, &offers, budget);
    let mut flags = Vec::with_capacity(chosen.len());
    let mut next = 0usize;
    for cand in &chosen {
        let (split_name, p) = views[cand.split];
        let split = ds.split(split_name).expect("split read above");
        let given = p.label[cand.row] as usize;
        let row = p.row(cand.row);
        let other = match offers.get(cand.split).map(|o| o[cand.row]) {
            Some(Offer::Next(k)) => {
                next += 1;
                k as usize
            }
            _ => candidate(p, cand.row),
        };
        flags.push(Flag {
            split: split_name.to_string(),
            row: cand.row,
            id: split.ids[cand.row].clone(),
            text: split.texts[cand.row].clone(),
            label: names[given].to_string(),
            candidate: names[other].to_string(),
            label_prob: row[given],
            candidate_prob: row[other],
            score: cand.score,
            rule: cand.rule.to_string(),
            site: serde_json::Value::Null,
        });
    }
    let total: usize = if ctr {
        clicks(&views)
    } else {
        views.iter().map(|(_, p)| p.rows()).sum()
    };
    Ok(RowFlags {
        flags,
        total,
        skipped,
        estimate,
        next,
    })
}

/// What [`row_flags`] found.
struct RowFlags {
    flags: Vec<Flag>,
    /// Rows of the flagged splits.
    total: usize,
    /// Rows left out because every pair they could be offered was judged.
    skipped: usize,
    /// The estimated number of label issues (`budget: estimated`).
    estimate: Option<usize>,
    /// Flags offering a next candidate.
    next: usize,
}

/// The filter's metrics over the flags it chose from `total` rows.
fn flag_metrics(flags: &[Flag], total: usize, skipped: usize) -> Result<Metrics, String> {
    let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_rule: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_split: BTreeMap<String, usize> = BTreeMap::new();
    let mut hist = [0usize; 10];
    for f in flags {
        // A span's reading is titled "TYPE: words": counted by its type.
        let class = if f.site.is_null() {
            f.label.as_str()
        } else {
            f.label.split(':').next().unwrap_or_default()
        };
        *per_class.entry(class.to_string()).or_default() += 1;
        *per_rule.entry(f.rule.clone()).or_default() += 1;
        *per_split.entry(f.split.clone()).or_default() += 1;
        hist[((f.label_prob * 10.0) as usize).min(9)] += 1;
    }
    let mut m = Metrics::new();
    m.insert("flags".into(), json!(flags.len()));
    m.insert("rows".into(), json!(total));
    m.insert("judged_pairs_skipped".into(), json!(skipped));
    m.insert(
        "flag_rate".into(),
        json!(if total == 0 {
            0.0
        } else {
            flags.len() as f64 / total as f64
        }),
    );
    m.insert("flags_per_class".into(), json!(per_class));
    m.insert("flags_per_rule".into(), json!(per_rule));
    m.insert("flags_per_split".into(), json!(per_split));
    m.insert("label_prob_histogram".into(), json!(hist));
    Ok(m)
}
