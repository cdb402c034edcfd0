//! Click-through-rate prediction as a [`Task`]: the input is a feature row (a user, an item and
//! their context), the label a click (1) or no click (0), the prediction p(click). A dispute is a
//! click the model doubts: keep it (genuine interest) or mark it a false positive. Scores are
//! AUC, log-loss and calibration (mean predicted against observed CTR, expected calibration error).
//!
//! A row's text is its feature row, `field=value` pairs joined by tabs in the order of
//! [`CtrFields::fields`]; the model reads the fields, a judge sees them grouped by role.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::data::LabelSpec;
use crate::task::{Choice, Dispute, Question, Stale, Task};

/// The class index of a click; 0 is no click. A CTR label spec has exactly these two labels.
pub const CLICK: u32 = 1;

/// Which columns of a CTR source are features, and their roles. The first user field is the
/// user's key (a judge's question gathers that user's other clicks by it); the first item field
/// is the item's key. Both keys are features too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CtrFields {
    /// The user's fields, the key first (e.g. `[user_id, age, gender, occupation]`).
    pub user: Vec<String>,
    /// The item's fields, the key first (e.g. `[item_id, title, genres]`).
    pub item: Vec<String>,
    /// Fields of the impression itself (hour, device, position...).
    #[serde(default)]
    pub context: Vec<String>,
    /// Fields whose value is a number: the model scales the field's embedding by it instead of
    /// hashing each value.
    #[serde(default)]
    pub numeric: Vec<String>,
    /// Fields holding several values separated by this character (e.g. `genres: "|"`): each value
    /// is its own feature.
    #[serde(default)]
    pub multi: std::collections::BTreeMap<String, char>,
}

impl CtrFields {
    /// Every feature field, in the order rows write them: user, item, context.
    pub fn fields(&self) -> Vec<&str> {
        self.user
            .iter()
            .chain(&self.item)
            .chain(&self.context)
            .map(String::as_str)
            .collect()
    }

    /// Problems with the declaration (empty roles, a field twice, numeric or multi fields that
    /// are not features), each a sentence.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.user.is_empty() {
            out.push("`ctr.user` needs at least the user's key field".into());
        }
        if self.item.is_empty() {
            out.push("`ctr.item` needs at least the item's key field".into());
        }
        let fields = self.fields();
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            if !seen.insert(*f) {
                out.push(format!("field \"{f}\" is named twice in `ctr`"));
            }
        }
        for f in self.numeric.iter().chain(self.multi.keys()) {
            if !fields.contains(&f.as_str()) {
                out.push(format!(
                    "field \"{f}\" is numeric or multi-valued but is not a user, item or context field"
                ));
            }
        }
        out
    }

    /// The user key of a row's text.
    pub fn user_key<'a>(&self, text: &'a str) -> Option<&'a str> {
        value(text, self.user.first()?)
    }

    /// The item's fields of a row's text (key first).
    pub fn item_part<'a>(&self, text: &'a str) -> Vec<(&'a str, &'a str)> {
        pairs(text)
            .filter(|(f, _)| self.item.iter().any(|i| i == f))
            .collect()
    }
}

/// A row's text from its field values (in [`CtrFields::fields`] order). Tabs and newlines in a
/// value become spaces, so that a text always splits back into the same fields.
pub fn row_text(fields: &[&str], values: &[&str]) -> String {
    let mut out = String::new();
    for (k, (f, v)) in fields.iter().zip(values).enumerate() {
        if k > 0 {
            out.push('\t');
        }
        out.push_str(f);
        out.push('=');
        out.extend(v.chars().map(|c| {
            if c == '\t' || c == '\n' || c == '\r' {
                ' '
            } else {
                c
            }
        }));
    }
    out
}

/// The (field, value) pairs of a row's text.
pub fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split('\t').filter_map(|p| p.split_once('='))
}

/// The value of `field` in a row's text.
pub fn value<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    pairs(text).find(|(f, _)| *f == field).map(|(_, v)| v)
}

/// Reads a click label: 1/0, true/false, yes/no, click/no_click, or a spec label's name.
pub fn parse_click(raw: &str, spec: &LabelSpec) -> Option<u32> {
    let t = raw.trim();
    if let Some(i) = spec.index(t) {
        return Some(i);
    }
    match t.to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "click" => Some(CLICK),
        "0" | "0.0" | "false" | "no" | "no_click" => Some(0),
        _ => None,
    }
}

/// The default CTR label spec: `no_click` and `click`, with definitions a judge can use.
pub fn default_spec() -> LabelSpec {
    LabelSpec::new(vec![
        crate::data::LabelDef {
            name: "no_click".into(),
            definition: "a false positive: the interaction does not reflect genuine interest (a misclick, curiosity, or an item the user then disliked)".into(),
            examples: Vec::new(),
        },
        crate::data::LabelDef {
            name: "click".into(),
            definition: "genuine interest: the item fits what this user likes".into(),
            examples: Vec::new(),
        },
    ])
}

/// The CTR task. `fields` gives the roles; `history` is what the question shows as the user's
/// other clicks (item descriptions), gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct Ctr {
    pub fields: Option<CtrFields>,
    pub history: Vec<String>,
}

/// An item's fields other than its key, as `field: value` (the key alone when it has no others).
pub fn describe(item: &[(&str, &str)]) -> String {
    let shown: Vec<String> = item
        .iter()
        .skip(usize::from(item.len() > 1))
        .map(|(f, v)| format!("{f}: {v}"))
        .collect();
    shown.join(", ")
}

impl Ctr {
    fn render(&self, x: &str) -> String {
        let Some(f) = &self.fields else {
            return x.replace('\t', ", ");
        };
        let part = |names: &[String], skip_key: bool| -> String {
            let shown: Vec<String> = names
                .iter()
                .skip(usize::from(skip_key && names.len() > 1))
                .filter_map(|n| value(x, n).map(|v| format!("{n}: {v}")))
                .collect();
            shown.join(", ")
        };
        let mut out = format!("User: {}\n", part(&f.user, true));
        if self.history.is_empty() {
            out.push_str("Other items this user clicked: none in the training data\n");
        } else {
            out.push_str("Other items this user clicked:\n");
            for h in &self.history {
                out.push_str(&format!("- {h}\n"));
            }
        }
        if !f.context.is_empty() {
            out.push_str(&format!("Context: {}\n", part(&f.context, false)));
        }
        out.push_str(&format!("Candidate item: {}", describe(&f.item_part(x))));
        out
    }
}

impl Task for Ctr {
    const KIND: &'static str = "ctr";
    type Input = str;
    type Label = u32;
    type Prediction = [f32];
    type Site = ();
    type Scores = CtrScores;

    /// A click whose p(click) is below one half; its score is the click's loss, -ln p(click).
    fn disputes(&self, _x: &str, y: &u32, p: &[f32], spec: &LabelSpec) -> Vec<Dispute<()>> {
        let q = p.get(CLICK as usize).copied().unwrap_or(0.0);
        if *y != CLICK || q >= 0.5 || spec.len() != 2 {
            return Vec::new();
        }
        vec![Dispute {
            site: (),
            options: [spec.labels[1].name.clone(), spec.labels[0].name.clone()],
            score: -f64::from(q.max(1e-12)).ln(),
        }]
    }

    fn question(&self, x: &str, d: &Dispute<()>, spec: &LabelSpec, examples: usize) -> Question {
        let mut q = crate::classification::Classification.question(x, d, spec, examples);
        q.item = self.render(x);
        q
    }

    fn apply(
        &self,
        y: &mut u32,
        d: &Dispute<()>,
        c: Choice,
        spec: &LabelSpec,
    ) -> Result<(), Stale> {
        crate::classification::Classification.apply(y, d, c, spec)
    }

    fn score(&self, ys: &[u32], ps: &[&[f32]], _spec: &LabelSpec) -> CtrScores {
        let p: Vec<f64> = ps
            .iter()
            .map(|r| f64::from(r.get(CLICK as usize).copied().unwrap_or(0.0)))
            .collect();
        let y: Vec<bool> = ys.iter().map(|&k| k == CLICK).collect();
        score(&y, &p)
    }
}

/// Scores of one split's p(click) against its clicks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtrScores {
    pub rows: usize,
    pub clicks: usize,
    /// Area under the ROC curve (ties count half); null without both classes.
    pub auc: Option<f64>,
    /// Mean binary cross-entropy, p clipped to [1e-15, 1 - 1e-15].
    pub log_loss: f64,
    /// Mean p(click), and the observed click rate.
    pub mean_predicted: f64,
    pub observed_rate: f64,
    /// Expected calibration error over ten equal-width bins of p.
    pub calibration_error: f64,
    /// Per bin: [rows, mean p, observed rate].
    pub calibration: Vec<[f64; 3]>,
}

/// The AUC of scores `p` for positives `y`: the probability that a random positive scores above a
/// random negative, ties counting half (the Mann-Whitney statistic, as scikit-learn's
/// `roc_auc_score` computes it). None without both classes.
pub fn auc(y: &[bool], p: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let (mut rank_sum, mut pos) = (0.0f64, 0usize);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && p[order[j + 1]] == p[order[i]] {
            j += 1;
        }
        // Ranks i+1..=j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        for &k in &order[i..=j] {
            if y[k] {
                rank_sum += mean_rank;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = p.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let (pos, neg) = (pos as f64, neg as f64);
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Mean log-loss, p clipped to [1e-15, 1 - 1e-15].
pub fn log_loss(y: &[bool], p: &[f64]) -> f64 {
    if p.is_empty() {
        return 0.0;
    }
    let eps = 1e-15;
    let total: f64 = y
        .iter()
        .zip(p)
        .map(|(&y, &q)| {
            let q = q.clamp(eps, 1.0 - eps);
            if y {
                -q.ln()
            } else {
                -(1.0 - q).ln()
            }
        })
        .sum();
    total / p.len() as f64
}

/// Every CTR score of `p` against `y`.
pub fn score(y: &[bool], p: &[f64]) -> CtrScores {
    let n = p.len();
    let clicks = y.iter().filter(|&&c| c).count();
    let mut bins = vec![[0.0f64; 3]; 10];
    for (&c, &q) in y.iter().zip(p) {
        let b = ((q * 10.0) as usize).min(9);
        bins[b][0] += 1.0;
        bins[b][1] += q;
        bins[b][2] += f64::from(u8::from(c));
    }
    let mut ece = 0.0;
    for b in &mut bins {
        if b[0] > 0.0 {
            b[1] /= b[0];
            b[2] /= b[0];
            ece += b[0] / n as f64 * (b[1] - b[2]).abs();
        }
    }
    CtrScores {
        rows: n,
        clicks,
        auc: auc(y, p),
        log_loss: log_loss(y, p),
        mean_predicted: if n == 0 {
            0.0
        } else {
            p.iter().sum::<f64>() / n as f64
        },
        observed_rate: if n == 0 {
            0.0
        } else {
            clicks as f64 / n as f64
        },
        calibration_error: ece,
        calibration: bins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_half_and_needs_both_classes() {
        let y = [true, false, true, false];
        assert_eq!(auc(&y, &[0.9, 0.1, 0.8, 0.2]), Some(1.0));
        assert_eq!(auc(&y, &[0.1, 0.9, 0.2, 0.8]), Some(0.0));
        // One positive tied with one negative: (1 + 0.5 + 1 + 1) / 4.
        assert_eq!(auc(&y, &[0.5, 0.5, 0.9, 0.1]), Some(0.875));
        assert_eq!(auc(&[true, true], &[0.1, 0.2]), None);
    }

    #[test]
    fn log_loss_clips_certain_mistakes() {
        let l = log_loss(&[true], &[0.0]);
        assert!((l - 34.538776394910684).abs() < 1e-9, "{l}");
        let l = log_loss(&[true, false], &[0.8, 0.4]);
        assert!((l - (-(0.8f64.ln()) - 0.6f64.ln()) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn texts_split_back_into_their_fields_and_a_question_groups_them() {
        let f = CtrFields {
            user: vec!["user_id".into(), "age".into()],
            item: vec!["item_id".into(), "title".into()],
            ..Default::default()
        };
        let t = row_text(&f.fields(), &["7", "24", "50", "Star\tWars (1977)"]);
        assert_eq!(value(&t, "title"), Some("Star Wars (1977)"));
        assert_eq!(f.user_key(&t), Some("7"));
        let spec = default_spec();
        let task = Ctr {
            fields: Some(f.clone()),
            history: vec!["title: Toy Story (1995)".into()],
        };
        let d = Dispute {
            site: (),
            options: ["click".to_string(), "no_click".to_string()],
            score: 1.0,
        };
        let q = task.render(&t);
        assert!(q.contains("User: age: 24"), "{q}");
        assert!(q.contains("- title: Toy Story (1995)"), "{q}");
        assert!(
            q.ends_with("Candidate item: title: Star Wars (1977)"),
            "{q}"
        );
        let mut y = CLICK;
        Ctr::default()
            .apply(&mut y, &d, Choice::Take, &spec)
            .unwrap();
        assert_eq!(y, 0);
        assert!(Ctr::default()
            .apply(&mut y, &d, Choice::Take, &spec)
            .is_err());
    }
}
