//! `apply_labels`: the next dataset version from the relabeler's decisions, with an audit trail
//! of every change (row, old and new label, who decided, on what evidence, when).

use std::collections::BTreeMap;

use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path as CfgPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::binary_relabeler::{read_decisions, Decision, Outcome};
use crate::data::Dataset;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// Changes whose judge's confidence is known and below this are not applied.
    #[serde(default)]
    pub min_confidence: Option<f64>,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub split: String,
    pub row: usize,
    pub id: String,
    pub old_label: String,
    pub new_label: String,
    /// `llm` or `human`.
    pub source: String,
    /// The model's probabilities of the old and the new label.
    #[serde(deserialize_with = "crate::flags::null_as_nan")]
    pub old_prob: f32,
    #[serde(deserialize_with = "crate::flags::null_as_nan")]
    pub new_prob: f32,
    pub answer: Option<String>,
    pub confidence: Option<f64>,
    pub template_digest: Option<String>,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub at: Option<String>,
}

pub struct ApplyLabels;

/// Applies `decisions` to `ds` in place; returns the audit trail. Checks every decision refers to
/// a row that still has the label it was judged with, and never touches the test split.
pub fn apply(
    ds: &mut Dataset,
    decisions: &[Decision],
    min_confidence: Option<f64>,
) -> Result<Vec<AuditRecord>, String> {
    let mut audit = Vec::new();
    for (n, d) in decisions.iter().enumerate() {
        let f = &d.flag;
        let line = n + 1;
        if f.split == "test" {
            return Err(format!(
                "decisions line {line}: row {} is in the test split, which is never relabelled",
                f.id
            ));
        }
        if d.outcome != Outcome::Change {
            continue;
        }
        if let (Some(min), Some(conf)) = (min_confidence, d.confidence) {
            if conf < min {
                continue;
            }
        }
        let new = d.chosen.as_deref().unwrap_or("");
        if new != f.candidate || new == f.label {
            return Err(format!(
                "decisions line {line}: row {}: a change to \"{new}\" is not to its candidate \"{}\"",
                f.id, f.candidate
            ));
        }
        let Some(new_idx) = ds.labels.index(new) else {
            return Err(format!(
                "decisions line {line}: row {}: label \"{new}\" is not in the label set",
                f.id
            ));
        };
        let old_idx = ds.labels.index(&f.label);
        let split = ds.splits.get_mut(&f.split).ok_or_else(|| {
            format!(
                "decisions line {line}: the dataset has no split \"{}\"",
                f.split
            )
        })?;
        let row = if split.ids.get(f.row) == Some(&f.id) {
            f.row
        } else {
            split.ids.iter().position(|x| x == &f.id).ok_or_else(|| {
                format!(
                    "decisions line {line}: split {} has no row with id \"{}\"",
                    f.split, f.id
                )
            })?
        };
        if Some(split.labels[row]) != old_idx {
            return Err(format!(
                "decisions line {line}: row {} is labelled \"{}\" in this dataset, but was judged as \"{}\" (decisions from another dataset version?)",
                f.id, ds.labels.labels[split.labels[row] as usize].name, f.label
            ));
        }
        split.labels[row] = new_idx;
        audit.push(AuditRecord {
            split: f.split.clone(),
            row,
            id: f.id.clone(),
            old_label: f.label.clone(),
            new_label: new.to_string(),
            source: d.source.clone(),
            old_prob: f.label_prob,
            new_prob: f.candidate_prob,
            answer: d.answer.clone(),
            confidence: d.confidence,
            template_digest: d.template_digest.clone(),
            endpoint: d.endpoint.clone(),
            model: d.model.clone(),
            at: d.at.clone(),
        });
    }
    Ok(audit)
}

impl NodeKind for ApplyLabels {
    type Config = ApplyConfig;
    const KIND: &'static str = "apply_labels";
    const VERSION: &'static str = "1";
    const ABOUT: &'static str =
        "Writes the next dataset version from the relabeler's decisions, with an audit trail";

    fn outputs(_: &ApplyConfig) -> Vec<String> {
        vec!["dataset".into(), "audit".into()]
    }

    fn check(c: &ApplyConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = crate::require_inputs(
            inputs,
            &["dataset", "decisions"],
            "{dataset: DATA.dataset, decisions: RELABEL.decisions}",
        );
        if let Some(m) = c.min_confidence {
            if !(0.0..=1.0).contains(&m) {
                p.push(ConfigProblem::new(
                    CfgPath::root().key("min_confidence"),
                    format!("must be between 0 and 1; found {m}"),
                ));
            }
        }
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: ApplyConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let fail = NodeError::Failed;
        let mut ds =
            Dataset::read(&inputs["dataset"].path).map_err(|e| fail(format!("dataset: {e}")))?;
        let decisions = read_decisions(&inputs["decisions"].path).map_err(fail)?;
        let audit = apply(&mut ds, &decisions, c.min_confidence).map_err(fail)?;
        let out = ctx.output_path("dataset");
        ds.write(&out)
            .map_err(|e| NodeError::io("writing the dataset", e))?;
        let audit_path = ctx.output_path("audit");
        let mut text = String::new();
        for a in &audit {
            text.push_str(&serde_json::to_string(a).expect("audit records serialise"));
            text.push('\n');
        }
        std::fs::write(&audit_path, text).map_err(|e| NodeError::io("writing the audit", e))?;
        let mut pairs: BTreeMap<String, usize> = BTreeMap::new();
        for a in &audit {
            *pairs
                .entry(format!("{} -> {}", a.old_label, a.new_label))
                .or_default() += 1;
        }
        let mut top: Vec<(String, usize)> = pairs.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(10);
        let rows: usize = ds
            .splits
            .iter()
            .filter(|(k, _)| *k != "test")
            .map(|(_, s)| s.len())
            .sum();
        let mut m = Metrics::new();
        m.insert("changed".into(), json!(audit.len()));
        m.insert("decisions".into(), json!(decisions.len()));
        m.insert(
            "changed_fraction".into(),
            json!(if rows == 0 {
                0.0
            } else {
                audit.len() as f64 / rows as f64
            }),
        );
        m.insert(
            "top_changes".into(),
            json!(top
                .into_iter()
                .map(|(k, v)| json!({"change": k, "rows": v}))
                .collect::<Vec<_>>()),
        );
        Ok(NodeOutput {
            outputs: [
                ("dataset".to_string(), out),
                ("audit".to_string(), audit_path),
            ]
            .into(),
            metrics: m,
        })
    }
}

/// Label changes between two versions of a dataset: per split and class pair, with examples.
pub fn diff(a: &Dataset, b: &Dataset, examples: usize) -> serde_json::Value {
    let mut splits = serde_json::Map::new();
    let mut total = 0usize;
    for (name, sa) in &a.splits {
        let Some(sb) = b.splits.get(name) else {
            continue;
        };
        let pos: std::collections::HashMap<&str, usize> = sb
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut pairs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut per_class: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut missing = 0usize;
        for i in 0..sa.len() {
            let Some(&j) = pos.get(sa.ids[i].as_str()) else {
                missing += 1;
                continue;
            };
            let old = &a.labels.labels[sa.labels[i] as usize].name;
            let new = &b.labels.labels[sb.labels[j] as usize].name;
            if old != new {
                per_class.entry(old.clone()).or_default().0 += 1;
                per_class.entry(new.clone()).or_default().1 += 1;
                pairs
                    .entry((old.clone(), new.clone()))
                    .or_default()
                    .push(sa.texts[i].clone());
            }
        }
        let changed: usize = pairs.values().map(Vec::len).sum();
        total += changed;
        let mut ranked: Vec<_> = pairs.into_iter().collect();
        ranked.sort_by(|x, y| y.1.len().cmp(&x.1.len()).then(x.0.cmp(&y.0)));
        splits.insert(
            name.clone(),
            json!({
                "rows": sa.len(),
                "changed": changed,
                "missing_in_b": missing,
                "per_class": per_class.into_iter().map(|(k, (out, inn))| (k, json!({"relabelled_away": out, "relabelled_to": inn}))).collect::<serde_json::Map<_, _>>(),
                "changes": ranked.into_iter().map(|((o, n), texts)| json!({
                    "from": o, "to": n, "rows": texts.len(),
                    "examples": texts.into_iter().take(examples).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        );
    }
    json!({"changed": total, "splits": splits})
}

/// A dataset folder for `relabel diff`, with an error that says what was expected.
pub fn read_dataset(p: &std::path::Path) -> Result<Dataset, String> {
    Dataset::read(p).map_err(|e| {
        format!(
            "{}: {e} (expected a dataset folder, as written by a dataset or apply_labels node)",
            p.display()
        )
    })
}
