//! `apply_labels`: the next dataset version from the relabeler's decisions, with an audit trail
//! of every change (row, old and new label, who decided, on what evidence, when); or, as the
//! baselines relabelling is measured against, every flagged row flipped to the model's candidate
//! or dropped.

use std::collections::BTreeMap;

use relabel_engine::plugin::{
    ConfigProblem, Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput,
};
use relabel_engine::span::Path as CfgPath;
use relabel_tasks::data::relabelable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::Dataset;
use crate::flags::Flag;
use relabel_tasks::decisions::{read_decisions, Decision, Failure, Outcome, Source};
use relabel_tasks::rows;
use relabel_tasks::task::{Choice, TaskKind};

/// What `apply_labels` makes the next dataset version from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The relabeler's (an LLM's or people's) `decisions`.
    #[default]
    Decisions,
    /// A baseline with no judge: every row in `flags` takes its candidate (the model's
    /// prediction).
    Flip,
    /// A baseline with no judge (cleanlab's prune): every row in `flags` is left out.
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// `decisions` (default; input `decisions`), or a judge-free baseline over input `flags`:
    /// `flip` (to the model's candidate) or `drop`. With a baseline, an input `decisions` is
    /// not read.
    #[serde(default)]
    pub action: Action,
    /// Changes whose judge's confidence is known and below this are not applied.
    #[serde(default)]
    pub min_confidence: Option<f64>,
}

/// The row a flag or decision refers to (by id, the row number being a hint), checked to still
/// carry the label it was flagged or judged with; never a test row.
fn locate(ds: &Dataset, f: &Flag, line: usize, what: &str) -> Result<usize, String> {
    if let Err(e) = relabelable(&f.split) {
        return Err(format!("{what} line {line}: row {}: {e}", f.id));
    }
    let split = ds.splits.get(&f.split).ok_or_else(|| {
        format!(
            "{what} line {line}: the dataset has no split \"{}\"",
            f.split
        )
    })?;
    let row = if split.ids.get(f.row) == Some(&f.id) {
        f.row
    } else {
        split.ids.iter().position(|x| x == &f.id).ok_or_else(|| {
            format!(
                "{what} line {line}: split {} has no row with id \"{}\"",
                f.split, f.id
            )
        })?
    };
    let verb = if what == "flags" { "flagged" } else { "judged" };
    if ds.task == TaskKind::Classification {
        if Some(split.labels[row]) != ds.labels.index(&f.label) {
            return Err(format!(
                "{what} line {line}: row {} is labelled \"{}\" in this dataset, but was {verb} as \"{}\" ({what} from another dataset version?)",
                f.id,
                ds.labels.labels[split.labels[row] as usize].name,
                f.label,
            ));
        }
    } else {
        rows::holds(ds, f, row).map_err(|e| {
            format!(
                "{what} line {line}: row {}: {e}; it was {verb} as \"{}\"",
                f.id, f.label
            )
        })?;
    }
    Ok(row)
}

/// The questions a judge decided (undecided rows may be asked again).
pub fn judged_pairs(decisions: &[Decision]) -> Vec<crate::data::Judged> {
    decisions
        .iter()
        .filter_map(|d| {
            d.chosen.as_ref().map(|chosen| crate::data::Judged {
                split: d.flag.split.clone(),
                id: d.flag.id.clone(),
                pair: [d.flag.label.clone(), d.flag.candidate.clone()],
                chosen: chosen.clone(),
            })
        })
        .collect()
}

/// The `flip` baseline's decisions: every flagged row changes to its candidate, unjudged.
pub fn flip_decisions(flags: &[Flag]) -> Vec<Decision> {
    flags
        .iter()
        .map(|f| {
            let mut d = Decision::undecided(f.clone(), Source::Flip, Failure::Malformed);
            d.outcome = Outcome::Change;
            d.failure = None;
            d.chosen = Some(f.candidate.clone());
            d
        })
        .collect()
}

/// The `drop` baseline: leaves every flagged row out of `ds`; returns the audit trail (new label
/// `(dropped)`). A row flagged twice is dropped once.
pub fn drop_flagged(ds: &mut Dataset, flags: &[Flag]) -> Result<Vec<AuditRecord>, String> {
    let mut gone: BTreeMap<String, std::collections::BTreeSet<usize>> = BTreeMap::new();
    let mut audit = Vec::new();
    for (n, f) in flags.iter().enumerate() {
        let row = locate(ds, f, n + 1, "flags")?;
        if !gone.entry(f.split.clone()).or_default().insert(row) {
            continue;
        }
        audit.push(AuditRecord {
            split: f.split.clone(),
            row,
            id: f.id.clone(),
            old_label: f.label.clone(),
            new_label: DROPPED.to_string(),
            source: Source::Drop,
            old_prob: f.label_prob,
            new_prob: f.candidate_prob,
            answer: None,
            confidence: None,
            template_digest: None,
            endpoint: None,
            model: None,
            at: None,
            site: serde_json::Value::Null,
        });
    }
    for (name, rows) in gone {
        let s = ds
            .splits
            .get_mut(&name)
            .expect("located rows are in the dataset");
        s.retain_rows(|i| !rows.contains(&i));
    }
    Ok(audit)
}

/// The audit's new label for a dropped row.
pub const DROPPED: &str = "(dropped)";

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub split: String,
    pub row: usize,
    pub id: String,
    pub old_label: String,
    pub new_label: String,
    /// Who decided (`llm`, `human`, or the `flip` / `drop` baseline).
    pub source: Source,
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
    /// Where in the row the change is, for tasks with several disputes per row (the flag's
    /// site: a span, a box pair).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub site: serde_json::Value,
}

pub struct ApplyLabels;

/// What [`apply`] did: the audit trail, and the decisions left out because an earlier one in
/// the same row overlapped them (tagging), each with why.
#[derive(Debug, Default)]
pub struct Applied {
    pub audit: Vec<AuditRecord>,
    pub overlapped: Vec<String>,
}

/// Applies `decisions` to `ds` in place, in order. Checks every decision refers to a row that
/// still has the label it was judged with, and never touches the test split.
pub fn apply(
    ds: &mut Dataset,
    decisions: &[Decision],
    min_confidence: Option<f64>,
) -> Result<Applied, String> {
    let mut audit = Vec::new();
    let mut overlapped = Vec::new();
    // Tasks with several disputes per row check each against the version as it came in.
    let original = (ds.task != TaskKind::Classification).then(|| ds.clone());
    for (n, d) in decisions.iter().enumerate() {
        let f = &d.flag;
        let line = n + 1;
        if let Err(e) = relabelable(&f.split) {
            return Err(format!("decisions line {line}: row {}: {e}", f.id));
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
        if rows::options_are_labels(ds.task) && ds.labels.index(new).is_none() {
            return Err(format!(
                "decisions line {line}: row {}: label \"{new}\" is not in the label set",
                f.id
            ));
        }
        // Checked against the version as it came in: a decision made on another version is an
        // error; one an earlier decision here overlapped (two disputed spans of a sentence) is
        // left out, the earlier (higher-ranked) one winning.
        let row = locate(original.as_ref().unwrap_or(ds), f, line, "decisions")?;
        // The task applies the judge's choice between the flag's two options.
        if let Err(e) = rows::apply(ds, f, row, Choice::Take) {
            if original.is_some() {
                overlapped.push(format!("decisions line {line}: row {}: {e}", f.id));
                continue;
            }
            return Err(format!("decisions line {line}: row {}: {e}", f.id));
        }
        audit.push(AuditRecord {
            split: f.split.clone(),
            row,
            id: f.id.clone(),
            old_label: f.label.clone(),
            new_label: new.to_string(),
            source: d.source,
            old_prob: f.label_prob,
            new_prob: f.candidate_prob,
            answer: d.answer.clone(),
            confidence: d.confidence,
            template_digest: d.template_digest.clone(),
            endpoint: d.endpoint.clone(),
            model: d.model.clone(),
            at: d.at.clone(),
            site: f.site.clone(),
        });
    }
    Ok(Applied { audit, overlapped })
}

impl NodeKind for ApplyLabels {
    type Config = ApplyConfig;
    const KIND: &'static str = "apply_labels";
    const VERSION: &'static str = "3";
    const ABOUT: &'static str =
        "Writes the next dataset version from the relabeler's decisions, with an audit trail";

    fn outputs(_: &ApplyConfig) -> Vec<String> {
        vec!["dataset".into(), "audit".into()]
    }

    fn check(c: &ApplyConfig, inputs: &[String]) -> Vec<ConfigProblem> {
        let mut p = match c.action {
            Action::Decisions => crate::inputs::require_inputs(
                inputs,
                &["dataset", "decisions"],
                "{dataset: DATA.dataset, decisions: RELABEL.decisions}",
            ),
            Action::Flip | Action::Drop => crate::inputs::require_inputs(
                inputs,
                &["dataset", "flags"],
                "{dataset: DATA.dataset, flags: FILTER.flags}",
            ),
        };
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
        let read_flags =
            || crate::flags::read(&inputs["flags"].path).map_err(|e| fail(format!("flags: {e}")));
        let mut new_judged = Vec::new();
        let mut overlapped = Vec::new();
        let (decisions, audit) = match c.action {
            Action::Decisions => {
                let decisions = read_decisions(&inputs["decisions"].path).map_err(fail)?;
                let a = apply(&mut ds, &decisions, c.min_confidence).map_err(fail)?;
                new_judged = judged_pairs(&decisions);
                overlapped = a.overlapped;
                (decisions.len(), a.audit)
            }
            Action::Flip => {
                let decisions = flip_decisions(&read_flags()?);
                let a = apply(&mut ds, &decisions, None).map_err(fail)?;
                overlapped = a.overlapped;
                (decisions.len(), a.audit)
            }
            Action::Drop => {
                let flags = read_flags()?;
                (flags.len(), drop_flagged(&mut ds, &flags).map_err(fail)?)
            }
        };
        let out = ctx.output_path("dataset");
        ds.write(&out)
            .map_err(|e| NodeError::io("writing the dataset", e))?;
        crate::data::carry_images(&inputs["dataset"].path, &out)
            .map_err(|e| NodeError::io("carrying the dataset's images", e))?;
        // The judged pairs so far, and this round's decided ones, travel with the new version.
        let mut judged = crate::data::read_judged(&inputs["dataset"].path)
            .map_err(|e| fail(format!("dataset: {e}")))?;
        judged.extend(new_judged);
        if !judged.is_empty() {
            let mut text = String::new();
            for j in &judged {
                text.push_str(&serde_json::to_string(j).expect("judged pairs serialise"));
                text.push('\n');
            }
            std::fs::write(out.join(crate::data::JUDGED_FILE), text)
                .map_err(|e| NodeError::io("writing the judged pairs", e))?;
        }
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
            .filter(|(k, _)| relabelable(k).is_ok())
            .map(|(_, s)| s.len())
            .sum();
        let mut m = Metrics::new();
        m.insert("changed".into(), json!(audit.len()));
        m.insert("overlapped".into(), json!(overlapped.len()));
        if !overlapped.is_empty() {
            m.insert(
                "overlapped_examples".into(),
                json!(&overlapped[..overlapped.len().min(10)]),
            );
        }
        m.insert("decisions".into(), json!(decisions));
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
            if a.task == TaskKind::Tagging {
                // Span changes: each differing span's old and new reading.
                for c in relabel_tasks::tagging::changes(
                    &sa.tokens[i],
                    &sa.tags[i],
                    &sb.tags[j],
                    &a.labels,
                ) {
                    per_class.entry(c.from_type.clone()).or_default().0 += 1;
                    per_class.entry(c.to_type.clone()).or_default().1 += 1;
                    pairs
                        .entry((c.from_type, c.to_type))
                        .or_default()
                        .push(format!("{} -> {}: {}", c.from, c.to, c.sentence));
                }
                continue;
            }
            if a.task == TaskKind::Generation {
                if sa.targets[i] != sb.targets[j] {
                    per_class.entry("target".into()).or_default().0 += 1;
                    per_class.entry("target".into()).or_default().1 += 1;
                    pairs
                        .entry(("target".into(), "target".into()))
                        .or_default()
                        .push(format!(
                            "{}: \"{}\" -> \"{}\"",
                            sa.texts[i], sa.targets[i], sb.targets[j]
                        ));
                }
                continue;
            }
            if a.task == TaskKind::Detection {
                // Box changes: boxes only in a (removed or replaced) and only in b (added).
                use relabel_tasks::detection::title;
                let gone: Vec<_> = sa.boxes[i]
                    .iter()
                    .filter(|x| !sb.boxes[j].iter().any(|y| y.same(x)))
                    .collect();
                let new: Vec<_> = sb.boxes[j]
                    .iter()
                    .filter(|y| !sa.boxes[i].iter().any(|x| x.same(y)))
                    .collect();
                if gone.is_empty() && new.is_empty() {
                    continue;
                }
                let name = |l: &relabel_tasks::data::LabelSpec, k: u32| {
                    l.labels
                        .get(k as usize)
                        .map(|d| d.name.clone())
                        .unwrap_or_default()
                };
                let from = gone.first().map(|x| name(&a.labels, x.class));
                let to = new.first().map(|y| name(&b.labels, y.class));
                let none = || relabel_tasks::detection::NO_BOX.to_string();
                let (from, to) = (from.unwrap_or_else(none), to.unwrap_or_else(none));
                per_class.entry(from.clone()).or_default().0 += 1;
                per_class.entry(to.clone()).or_default().1 += 1;
                let show = |bs: &[&relabel_tasks::detection::BBox], l| {
                    bs.iter()
                        .map(|x| title(Some(x), l))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                pairs.entry((from, to)).or_default().push(format!(
                    "{}: [{}] -> [{}]",
                    sa.ids[i],
                    show(&gone, &a.labels),
                    show(&new, &b.labels)
                ));
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{LabelSpec, Split};

    fn dataset() -> Dataset {
        let split = |p: &str, labels: Vec<u32>| Split {
            ids: (0..labels.len()).map(|i| format!("{p}{i}")).collect(),
            texts: (0..labels.len()).map(|i| format!("text {p}{i}")).collect(),
            labels,
            ..Default::default()
        };
        Dataset {
            task: Default::default(),
            labels: LabelSpec::from_names(["a", "b", "c"].map(String::from)),
            splits: [
                ("train".to_string(), split("t", vec![0, 1, 2, 0, 1])),
                ("test".to_string(), split("x", vec![0, 1])),
            ]
            .into(),
            ctr: None,
        }
    }

    fn flag(split: &str, row: usize, id: &str, label: &str, candidate: &str) -> Flag {
        Flag {
            split: split.into(),
            row,
            id: id.into(),
            text: String::new(),
            label: label.into(),
            candidate: candidate.into(),
            label_prob: 0.2,
            candidate_prob: 0.7,
            score: 1.0,
            rule: "pred_neq_label".into(),
            site: serde_json::Value::Null,
        }
    }

    #[test]
    fn flip_moves_each_flagged_row_to_its_candidate_and_nothing_else() {
        let mut ds = dataset();
        // Row 3 is found by id although its row hint is stale.
        let flags = [
            flag("train", 1, "t1", "b", "c"),
            flag("train", 0, "t3", "a", "b"),
        ];
        let audit = apply(&mut ds, &flip_decisions(&flags), None).unwrap().audit;
        assert_eq!(ds.splits["train"].labels, vec![0, 2, 2, 1, 1]);
        assert_eq!(audit.len(), 2);
        assert!(audit.iter().all(|a| a.source == Source::Flip));
        assert_eq!((audit[1].row, audit[1].new_label.as_str()), (3, "b"));
    }

    #[test]
    fn drop_leaves_flagged_rows_out_once_and_keeps_the_rest_in_order() {
        let mut ds = dataset();
        let flags = [
            flag("train", 1, "t1", "b", "c"),
            flag("train", 4, "t4", "b", "a"),
            flag("train", 1, "t1", "b", "a"),
        ];
        let audit = drop_flagged(&mut ds, &flags).unwrap();
        let t = &ds.splits["train"];
        assert_eq!(t.ids, vec!["t0", "t2", "t3"]);
        assert_eq!(t.texts, vec!["text t0", "text t2", "text t3"]);
        assert_eq!(t.labels, vec![0, 2, 0]);
        assert_eq!(audit.len(), 2);
        assert!(audit.iter().all(|a| a.new_label == DROPPED));
        assert_eq!(ds.splits["test"].len(), 2);
    }

    #[test]
    fn baselines_refuse_test_rows_and_stale_flags_with_the_line() {
        let mut ds = dataset();
        let e = drop_flagged(&mut ds, &[flag("test", 0, "x0", "a", "b")]).unwrap_err();
        assert!(
            e.contains("flags line 1") && e.contains("test split"),
            "{e}"
        );
        let stale = [
            flag("train", 0, "t0", "a", "b"),
            flag("train", 2, "t2", "a", "b"),
        ];
        let e = drop_flagged(&mut ds, &stale).unwrap_err();
        assert!(
            e.contains("flags line 2") && e.contains("labelled \"c\""),
            "{e}"
        );
        // Nothing was dropped by the failed call.
        assert_eq!(ds.splits["train"].len(), 5);
        let e = apply(&mut ds, &flip_decisions(&stale), None).unwrap_err();
        assert!(e.contains("decisions line 2"), "{e}");
    }
}
