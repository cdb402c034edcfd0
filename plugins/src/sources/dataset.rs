//! The `dataset` node kind: reads train/dev/test from JSONL, CSV/TSV or Parquet and a label spec,
//! checks every row, and writes a typed dataset artifact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use relabel_engine::diag::did_you_mean;
use relabel_engine::plugin::{Inputs, Metrics, NodeContext, NodeError, NodeKind, NodeOutput};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{content_id, Dataset, LabelSpec, Split};
pub use crate::sources::rows::{read_rows, Columns, Format, RawRow};

/// What to do with a row that fails its checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnBadRow {
    /// Stop, naming every bad row (up to 20) with its file and row number.
    #[default]
    Fail,
    /// Leave the row out and count it in the node's metrics.
    Skip,
}

/// Config of a `dataset` node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// The training split (relative to the manifest).
    pub train: PathBuf,
    /// The dev split; without it, `dev_fraction` of train is held out (by row id, stable).
    #[serde(default)]
    pub dev: Option<PathBuf>,
    /// The FIXED human-labelled test split: evaluated every round, never relabelled.
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Human-labelled rows for the badcase loop to mine (the `badcase` split): scored every
    /// round and never relabelled, kept apart from `test` so that mining leaves the fixed test
    /// an unbiased yardstick.
    #[serde(default)]
    pub badcase: Option<PathBuf>,
    /// Without a `badcase` file: this fraction of the test rows (by row id, stable) becomes the
    /// badcase split and leaves the test split. 0 (the default): none.
    #[serde(default)]
    pub badcase_fraction: f64,
    #[serde(default = "default_dev_fraction")]
    pub dev_fraction: f64,
    #[serde(default)]
    pub format: Format,
    #[serde(default = "default_text")]
    pub text_column: String,
    #[serde(default = "default_label")]
    pub label_column: String,
    /// A column with stable row ids; without it ids are derived from the text.
    #[serde(default)]
    pub id_column: Option<String>,
    /// `labels.yaml`: each label's name, definition and examples. Without it, the labels are
    /// the distinct labels of the train split (sorted) with no definitions.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    #[serde(default)]
    pub on_bad_row: OnBadRow,
    /// What a label is: `classification` (a text and one class). The artifact records it, so
    /// later nodes dispatch on it without repeating it.
    #[serde(default, skip_serializing_if = "is_classification")]
    pub task: relabel_tasks::task::TaskKind,
    /// Tagging: how the files write tags (`iob2`, `iob1`, `bioes`); stored as IOB2.
    #[serde(default)]
    pub scheme: relabel_tasks::tagging::Scheme,
    /// Tagging: keep sentences whose tag sequence is ill-formed (an I- after O or another type,
    /// an unfinished BIOES entity), repaired as the conlleval rules read them, and count them;
    /// without it they are bad rows. Unknown entity types are bad rows either way.
    #[serde(default)]
    pub repair_tags: bool,
    /// Tagging, CoNLL files: the column of the tag, from 0 [default: the last].
    #[serde(default)]
    pub tag_column: Option<usize>,
    /// CTR (`task: ctr`): the feature columns by role (`user`, `item`, `context`; the first of
    /// `user` and of `item` are the keys), which are `numeric`, and which hold several values
    /// (`multi: {genres: "|"}`). The label column holds the click: 1/0, true/false, or a label's name.
    #[serde(default)]
    pub ctr: Option<relabel_tasks::ctr::CtrFields>,
    /// Generation: the source column of the `test` and `badcase` files when it differs from
    /// train's `text_column` (E2E: train's targets were written for `orig_mr`, the fixed test's
    /// for `mr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_text_column: Option<String>,
    /// Detection: the folder the annotations' image file names are relative to [default: each
    /// annotation file's folder]. Its contents join the cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_dir: Option<PathBuf>,
    /// The paths are inside the node's one input (a folder another node made, e.g. a
    /// `command` that fetches or generates data) instead of relative to the manifest.
    #[serde(default)]
    pub in_input: bool,
}

fn is_classification(t: &relabel_tasks::task::TaskKind) -> bool {
    *t == relabel_tasks::task::TaskKind::Classification
}

fn default_dev_fraction() -> f64 {
    0.1
}

fn default_text() -> String {
    "text".into()
}

fn default_label() -> String {
    "label".into()
}

/// The `dataset` node kind.
pub struct DatasetNode;

impl DatasetConfig {
    /// The columns rows are read by.
    pub fn columns(&self) -> Columns {
        match &self.ctr {
            Some(f) => Columns {
                text: String::new(),
                label: self.label_column.clone(),
                id: self.id_column.clone(),
                extra: f.fields().iter().map(|s| s.to_string()).collect(),
            },
            None => Columns {
                text: self.text_column.clone(),
                label: self.label_column.clone(),
                id: self.id_column.clone(),
                extra: Vec::new(),
            },
        }
    }
}

/// A row that failed its checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRow {
    pub file: String,
    /// The line (1-based); 0 when the reason names the place itself.
    pub row: usize,
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.row == 0 {
            // The reason names the place itself (a record of a JSON file, an XML line:col).
            return write!(f, "{}", self.reason);
        }
        write!(f, "{}:{}: {}", self.file, self.row, self.reason)
    }
}

/// Checks rows against the label spec: missing columns, empty text, unknown labels, duplicate ids.
pub fn check_rows(
    file: &str,
    rows: Vec<RawRow>,
    spec: &LabelSpec,
    c: &DatasetConfig,
    seen_ids: &mut HashMap<String, String>,
) -> (Split, Vec<BadRow>) {
    let mut split = Split::default();
    let mut bad = Vec::new();
    let mut occurrences: HashMap<String, usize> = HashMap::new();
    let names = spec.names();
    for r in rows {
        let fail = |reason: String| BadRow {
            file: file.to_string(),
            row: r.row,
            reason,
        };
        if let Some(why) = &r.unreadable {
            bad.push(fail(why.clone()));
            continue;
        }
        let Some(text) = r.text.clone() else {
            bad.push(fail(format!("missing column \"{}\"", c.text_column)));
            continue;
        };
        if text.trim().is_empty() {
            bad.push(fail("empty text".into()));
            continue;
        }
        let Some(label) = r.label.clone() else {
            bad.push(fail(format!("missing column \"{}\"", c.label_column)));
            continue;
        };
        let Some(li) = spec.index(label.trim()) else {
            let hint = did_you_mean(label.trim(), names.iter().copied())
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            bad.push(fail(format!("unknown label \"{label}\"{hint}")));
            continue;
        };
        let id = match (&c.id_column, &r.id) {
            (Some(col), None) => {
                bad.push(fail(format!("missing column \"{col}\"")));
                continue;
            }
            (Some(_), Some(id)) => id.clone(),
            (None, _) => {
                let n = occurrences.entry(text.clone()).or_insert(0);
                // The file's name joins the digest: the same text in train and test is two rows.
                let id = content_id(&format!("{file}\n{text}"), *n);
                *n += 1;
                id
            }
        };
        let at = format!("{file}:{}", r.row);
        if let Some(first) = seen_ids.get(&id) {
            bad.push(fail(format!("duplicate id \"{id}\" (first at {first})")));
            continue;
        }
        seen_ids.insert(id.clone(), at);
        split.ids.push(id);
        split.texts.push(text);
        split.labels.push(li);
    }
    (split, bad)
}

/// Refuses `bad` rows unless `on_bad_row: skip` (up to 20 shown).
fn refuse_bad(c: &DatasetConfig, bad_rows: &[BadRow], what: &str) -> Result<(), String> {
    if c.on_bad_row == OnBadRow::Fail && !bad_rows.is_empty() {
        let shown: Vec<String> = bad_rows.iter().take(20).map(|b| b.to_string()).collect();
        let more = if bad_rows.len() > 20 {
            format!("\n... and {} more", bad_rows.len() - 20)
        } else {
            String::new()
        };
        return Err(format!(
            "{} bad {what}{} (set `on_bad_row: skip` to leave them out):\n{}{more}",
            bad_rows.len(),
            if bad_rows.len() == 1 { "" } else { "s" },
            shown.join("\n")
        ));
    }
    Ok(())
}

/// Without a `dev` file, replaces train by its kept part and a held-out dev ([`hold_out`]).
fn hold_out_dev(c: &DatasetConfig, splits: &mut BTreeMap<String, Split>) {
    if c.dev.is_none() {
        if let Some(train) = splits.remove("train") {
            let (keep, dev) = hold_out(train, c.dev_fraction);
            splits.insert("train".into(), keep);
            splits.insert("dev".into(), dev);
        }
    }
}

/// `badcase_fraction` of the test rows become the badcase split (without a `badcase` file).
fn hold_out_badcase(c: &DatasetConfig, splits: &mut BTreeMap<String, Split>) {
    if c.badcase.is_none() && c.badcase_fraction > 0.0 {
        if let Some(test) = splits.remove("test") {
            let (keep, badcase) = hold_out(test, c.badcase_fraction);
            splits.insert("test".into(), keep);
            splits.insert("badcase".into(), badcase);
        }
    }
}

/// Holds out `fraction` of `train` as dev, chosen by row id (stable); for generation by
/// source, so that every target of a held-out source is held out with it.
fn hold_out(train: Split, fraction: f64) -> (Split, Split) {
    let (mut keep, mut dev) = (Split::default(), Split::default());
    let by_source = !train.targets.is_empty();
    for i in 0..train.len() {
        let key = if by_source {
            &train.texts[i]
        } else {
            &train.ids[i]
        };
        let h = u64::from_str_radix(&blake3::hash(key.as_bytes()).to_hex()[..12], 16).unwrap_or(0);
        if (h as f64 / (1u64 << 48) as f64) < fraction {
            dev.push_row(&train, i);
        } else {
            keep.push_row(&train, i);
        }
    }
    (keep, dev)
}

/// The split files a config names, in order, with paths resolved against `dir`.
fn split_files(c: &DatasetConfig, dir: &Path) -> Vec<(&'static str, PathBuf, String)> {
    let mut files = vec![("train", c.train.clone())];
    files.extend(c.dev.iter().map(|p| ("dev", p.clone())));
    files.extend(c.test.iter().map(|p| ("test", p.clone())));
    files.extend(c.badcase.iter().map(|p| ("badcase", p.clone())));
    files
        .into_iter()
        .map(|(name, p)| {
            let shown = p.display().to_string();
            let full = if p.is_absolute() { p } else { dir.join(p) };
            (name, full, shown)
        })
        .collect()
}

/// After reading: refuses bad rows (unless skipped), holds out dev and badcase, and refuses an
/// empty train split (`what`: "row" or "sentence").
fn finish_splits(
    c: &DatasetConfig,
    bad_rows: &[BadRow],
    what: &str,
    splits: &mut BTreeMap<String, Split>,
) -> Result<(), String> {
    refuse_bad(c, bad_rows, what)?;
    hold_out_dev(c, splits);
    hold_out_badcase(c, splits);
    if splits.get("train").is_none_or(Split::is_empty) {
        return Err(format!(
            "{}: the train split has no {what}s",
            c.train.display()
        ));
    }
    Ok(())
}

/// The bad-row count and up to 20 of them, named by file and row.
fn bad_row_metrics(metrics: &mut Metrics, bad_rows: &[BadRow]) {
    metrics.insert("bad_rows".into(), bad_rows.len().into());
    if !bad_rows.is_empty() {
        metrics.insert(
            "bad_row_examples".into(),
            json!(bad_rows
                .iter()
                .take(20)
                .map(|b| b.to_string())
                .collect::<Vec<_>>()),
        );
    }
}

/// `task: tagging`: sentences from CoNLL or JSONL files, tags checked against the entity types.
fn build_tagging(c: &DatasetConfig, dir: &Path) -> Result<(Dataset, Metrics), String> {
    use crate::sources::tagged::{check_sentence, read_sentences, types_in};
    let mut read = Vec::new();
    for (name, p, shown) in split_files(c, dir) {
        read.push((name, shown, read_sentences(&p, c.tag_column)?));
    }
    let spec = match &c.labels {
        Some(p) if p.is_absolute() => LabelSpec::load(p)?,
        Some(p) => LabelSpec::load(&dir.join(p))?,
        None => {
            let types = types_in(&read[0].2);
            if types.len() < 2 {
                return Err(format!("{}: fewer than two entity types in the train split's tags (B-TYPE, I-TYPE, ...); give `labels:`", c.train.display()));
            }
            LabelSpec::from_names(types)
        }
    };
    let (mut bad_rows, mut repaired) = (Vec::new(), 0usize);
    let mut splits = BTreeMap::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, file, sentences) in read {
        let mut split = Split::default();
        let mut occurrences: HashMap<String, usize> = HashMap::new();
        for s in sentences {
            let (tags, problems, fixed) = check_sentence(&s, c.scheme, &spec, c.repair_tags);
            let Some(tags) = tags else {
                bad_rows.push(BadRow {
                    file: file.clone(),
                    row: s.line,
                    reason: problems.join("; "),
                });
                continue;
            };
            repaired += usize::from(fixed > 0);
            let text = s.tokens.join(" ");
            let n = occurrences.entry(text.clone()).or_insert(0);
            let id = content_id(&format!("{file}\n{text}"), *n);
            *n += 1;
            if let Some(first) = seen.insert(id.clone(), format!("{file}:{}", s.line)) {
                bad_rows.push(BadRow {
                    file: file.clone(),
                    row: s.line,
                    reason: format!("duplicate id \"{id}\" (first at {first})"),
                });
                continue;
            }
            split.ids.push(id);
            split.texts.push(text);
            split.tokens.push(s.tokens);
            split.tags.push(tags);
        }
        splits.insert(name.to_string(), split);
    }
    finish_splits(c, &bad_rows, "sentence", &mut splits)?;
    let mut metrics = Metrics::new();
    metrics.insert("labels".into(), spec.len().into());
    for (name, s) in &splits {
        metrics.insert(format!("{name}_rows"), s.len().into());
        metrics.insert(
            format!("{name}_tokens"),
            s.tokens.iter().map(Vec::len).sum::<usize>().into(),
        );
    }
    bad_row_metrics(&mut metrics, &bad_rows);
    metrics.insert("repaired_rows".into(), repaired.into());
    let mut per_type = vec![0usize; spec.len()];
    for t in &splits["train"].tags {
        for e in relabel_tasks::tagging::entities(t) {
            per_type[e.kind as usize] += 1;
        }
    }
    metrics.insert(
        "train_entities_per_type".into(),
        json!(spec
            .names()
            .iter()
            .zip(per_type)
            .map(|(n, k)| (n.to_string(), json!(k)))
            .collect::<serde_json::Map<_, _>>()),
    );
    Ok((
        Dataset {
            task: c.task,
            labels: spec,
            splits,
            ctr: None,
        },
        metrics,
    ))
}

/// CTR: a row's feature fields become its text (`field=value`, tab-joined) and its click the
/// spec's label name; a missing field or a numeric field that is not a number makes it a bad row.
fn ctr_rows(
    rows: Vec<RawRow>,
    f: &relabel_tasks::ctr::CtrFields,
    spec: &LabelSpec,
    label_column: &str,
) -> Vec<RawRow> {
    let fields = f.fields();
    rows.into_iter()
        .map(|mut r| {
            if r.unreadable.is_some() {
                return r;
            }
            let mut values = Vec::with_capacity(fields.len());
            for (name, v) in fields.iter().zip(&r.extra) {
                let Some(v) = v.as_deref().map(str::trim) else {
                    r.unreadable = Some(format!("missing column \"{name}\""));
                    return r;
                };
                if f.numeric.iter().any(|n| n == name)
                    && !v.parse::<f64>().is_ok_and(f64::is_finite)
                {
                    r.unreadable = Some(format!(
                        "field \"{name}\" is numeric but holds \"{v}\""
                    ));
                    return r;
                }
                values.push(v);
            }
            r.text = Some(relabel_tasks::ctr::row_text(&fields, &values));
            if let Some(raw) = &r.label {
                match relabel_tasks::ctr::parse_click(raw, spec) {
                    Some(k) => r.label = Some(spec.labels[k as usize].name.clone()),
                    None => {
                        r.unreadable = Some(format!(
                            "column \"{label_column}\" holds \"{raw}\", not a click (1/0, true/false, or {})",
                            spec.names().join("/")
                        ))
                    }
                }
            }
            r
        })
        .collect()
}

/// `task: generation`: a source (`text_column`) and a target text (`label_column`) per row;
/// ids from `id_column` or from the source and target. An empty source or target is a bad row.
fn build_generation(c: &DatasetConfig, dir: &Path) -> Result<(Dataset, Metrics), String> {
    if c.labels.is_some() || c.ctr.is_some() {
        return Err("a generation dataset has no label set: its labels are the target texts (remove `labels:` / `ctr:`)".into());
    }
    let (mut splits, mut bad_rows) = (BTreeMap::new(), Vec::new());
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, p, file) in split_files(c, dir) {
        let mut cols = c.columns();
        if let (Some(t), "test" | "badcase") = (&c.test_text_column, name) {
            cols.text = t.clone();
        }
        let mut split = Split::default();
        let mut occurrences: HashMap<(String, String), usize> = HashMap::new();
        for r in read_rows(&p, c.format, &cols)? {
            let fail = |reason: String| BadRow {
                file: file.clone(),
                row: r.row,
                reason,
            };
            if let Some(why) = &r.unreadable {
                bad_rows.push(fail(why.clone()));
                continue;
            }
            let (Some(source), Some(target)) = (r.text.clone(), r.label.clone()) else {
                let missing = if r.text.is_none() {
                    &cols.text
                } else {
                    &cols.label
                };
                bad_rows.push(fail(format!("missing column \"{missing}\"")));
                continue;
            };
            if source.trim().is_empty() || target.trim().is_empty() {
                let what = if source.trim().is_empty() {
                    "source"
                } else {
                    "target"
                };
                bad_rows.push(fail(format!("empty {what}")));
                continue;
            }
            let id = match (&c.id_column, &r.id) {
                (Some(col), None) => {
                    bad_rows.push(fail(format!("missing column \"{col}\"")));
                    continue;
                }
                (Some(_), Some(id)) => id.clone(),
                (None, _) => {
                    let n = occurrences
                        .entry((source.clone(), target.clone()))
                        .or_insert(0);
                    let id = content_id(&format!("{file}\n{source}\n{target}"), *n);
                    *n += 1;
                    id
                }
            };
            if let Some(first) = seen.insert(id.clone(), format!("{file}:{}", r.row)) {
                bad_rows.push(fail(format!("duplicate id \"{id}\" (first at {first})")));
                continue;
            }
            split.ids.push(id);
            split.texts.push(source.trim().to_string());
            split.targets.push(target.trim().to_string());
        }
        splits.insert(name.to_string(), split);
    }
    finish_splits(c, &bad_rows, "row", &mut splits)?;
    let mut metrics = Metrics::new();
    for (name, s) in &splits {
        metrics.insert(format!("{name}_rows"), s.len().into());
        let sources: std::collections::HashSet<&str> = s.texts.iter().map(String::as_str).collect();
        metrics.insert(format!("{name}_sources"), sources.len().into());
    }
    bad_row_metrics(&mut metrics, &bad_rows);
    Ok((
        Dataset {
            task: c.task,
            labels: LabelSpec::new(Vec::new()),
            splits,
            ctr: None,
        },
        metrics,
    ))
}

/// `task: detection`: images and boxes from COCO JSON, VOC XML or CSV, every box checked; the
/// images are copied into `artifact` when given ([`crate::sources::boxes`]).
fn build_detection(
    c: &DatasetConfig,
    dir: &Path,
    artifact: Option<&Path>,
) -> Result<(Dataset, Metrics), String> {
    use crate::sources::boxes;
    if c.ctr.is_some() {
        return Err("`ctr:` goes with `task: ctr`".into());
    }
    let files = split_files(c, dir);
    let mut bad_rows = Vec::new();
    let mut read = Vec::new();
    let mut categories = Vec::new();
    for (name, p, shown) in &files {
        let (images, cats) = boxes::read_annotations(p, shown, &mut bad_rows)?;
        if *name == "train" {
            categories = cats;
        }
        read.push((*name, p.clone(), shown.clone(), images));
    }
    let spec = match &c.labels {
        Some(p) => LabelSpec::load(&if p.is_absolute() {
            p.clone()
        } else {
            dir.join(p)
        })?,
        None => boxes::spec_of(&categories, &read[0].3).ok_or_else(|| {
            format!(
                "{}: no classes: the train annotations have no boxes and no categories (give `labels:`)",
                c.train.display()
            )
        })?,
    };
    let mut seen = HashMap::new();
    let mut splits = BTreeMap::new();
    for (name, p, shown, images) in read {
        let image_dir = match &c.image_dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => dir.join(d),
            None if p.is_dir() => p.clone(),
            None => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let split = boxes::to_split(
            images,
            &spec,
            &image_dir,
            artifact,
            &shown,
            &mut seen,
            &mut bad_rows,
        );
        splits.insert(name.to_string(), split);
    }
    finish_splits(c, &bad_rows, "image", &mut splits)?;
    let mut metrics = Metrics::new();
    metrics.insert("labels".into(), spec.len().into());
    for (name, s) in &splits {
        metrics.insert(format!("{name}_images"), s.len().into());
        metrics.insert(
            format!("{name}_boxes"),
            s.boxes.iter().map(Vec::len).sum::<usize>().into(),
        );
    }
    if let Some(t) = splits.get("train") {
        metrics.insert(
            "train_boxes_per_label".into(),
            json!(boxes::per_class(t, &spec)),
        );
    }
    bad_row_metrics(&mut metrics, &bad_rows);
    Ok((
        Dataset {
            task: c.task,
            labels: spec,
            splits,
            ctr: None,
        },
        metrics,
    ))
}

/// Builds the dataset from its config; `dir` is what relative paths are relative to.
pub fn build(c: &DatasetConfig, dir: &Path) -> Result<(Dataset, Metrics), String> {
    build_into(c, dir, None)
}

/// [`build`], copying what the dataset refers to (detection's images) into the artifact folder
/// `artifact` when given.
pub fn build_into(
    c: &DatasetConfig,
    dir: &Path,
    artifact: Option<&Path>,
) -> Result<(Dataset, Metrics), String> {
    if c.task == relabel_tasks::task::TaskKind::Detection {
        return build_detection(c, dir, artifact);
    }
    if c.task == relabel_tasks::task::TaskKind::Tagging {
        return build_tagging(c, dir);
    }
    if c.task == relabel_tasks::task::TaskKind::Generation {
        return build_generation(c, dir);
    }
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let train_path = resolve(&c.train);
    let mut train_rows = read_rows(&train_path, c.format, &c.columns())?;
    let ctr = match (&c.ctr, c.task) {
        (Some(f), relabel_tasks::task::TaskKind::Ctr) => Some(f),
        (None, relabel_tasks::task::TaskKind::Ctr) => {
            return Err(
                "task: ctr needs `ctr:` naming the feature columns (user, item, ...)".into(),
            )
        }
        (Some(_), _) => return Err("`ctr:` goes with `task: ctr`".into()),
        (None, _) => None,
    };
    let spec = match (&c.labels, ctr) {
        (Some(p), _) => LabelSpec::load(&resolve(p))?,
        (None, Some(_)) => relabel_tasks::ctr::default_spec(),
        (None, None) => {
            // A set of borrowed labels: one comparison per row against the few distinct
            // ones, where sorting every row's copy cost n log n (a third of a 1M-row load).
            // (Inserted one by one: `collect` into a BTreeSet sorts every row first.)
            let mut distinct = std::collections::BTreeSet::new();
            for l in train_rows.iter().filter_map(|r| r.label.as_deref()) {
                let l = l.trim();
                if !l.is_empty() {
                    distinct.insert(l);
                }
            }
            let names: Vec<String> = distinct.into_iter().map(str::to_string).collect();
            if names.len() < 2 {
                return Err(format!(
                    "{}: fewer than two distinct labels in column \"{}\"",
                    c.train.display(),
                    c.label_column
                ));
            }
            LabelSpec::from_names(names)
        }
    };
    if let Some(f) = ctr {
        if spec.len() != 2 {
            return Err(format!(
                "a CTR label spec has exactly two labels (no click, then click); {} has {}",
                c.labels
                    .as_deref()
                    .unwrap_or(Path::new("the spec"))
                    .display(),
                spec.len()
            ));
        }
        if let Some(p) = f.problems().first() {
            return Err(p.clone());
        }
        train_rows = ctr_rows(train_rows, f, &spec, &c.label_column);
    }
    let mut seen = HashMap::new();
    let mut splits = BTreeMap::new();
    let mut bad_rows = Vec::new();
    let (train, bad) = check_rows(
        &c.train.display().to_string(),
        train_rows,
        &spec,
        c,
        &mut seen,
    );
    bad_rows.extend(bad);
    splits.insert("train".to_string(), train);
    for (name, path) in [("dev", &c.dev), ("test", &c.test), ("badcase", &c.badcase)] {
        if let Some(p) = path {
            let mut rows = read_rows(&resolve(p), c.format, &c.columns())?;
            if let Some(f) = ctr {
                rows = ctr_rows(rows, f, &spec, &c.label_column);
            }
            let (s, bad) = check_rows(&p.display().to_string(), rows, &spec, c, &mut seen);
            bad_rows.extend(bad);
            splits.insert(name.to_string(), s);
        }
    }
    refuse_bad(c, &bad_rows, "row")?;
    hold_out_dev(c, &mut splits);
    hold_out_badcase(c, &mut splits);
    if splits.get("train").is_none_or(Split::is_empty) {
        return Err(format!(
            "{}: the train split has no rows{}; a model cannot be trained on nothing",
            c.train.display(),
            if c.dev.is_none() && c.dev_fraction > 0.0 {
                format!(
                    " after holding out dev_fraction {} of it for dev",
                    c.dev_fraction
                )
            } else {
                " (an empty file, or only a header)".into()
            }
        ));
    }
    let mut metrics = Metrics::new();
    metrics.insert("labels".into(), spec.len().into());
    for (name, s) in &splits {
        metrics.insert(format!("{name}_rows"), s.len().into());
    }
    bad_row_metrics(&mut metrics, &bad_rows);
    let mut per_class = serde_json::Map::new();
    if let Some(train) = splits.get("train") {
        let mut counts = vec![0usize; spec.len()];
        for &l in &train.labels {
            counts[l as usize] += 1;
        }
        for (n, k) in spec.names().iter().zip(counts) {
            per_class.insert(n.to_string(), k.into());
        }
    }
    metrics.insert(
        "train_rows_per_label".into(),
        serde_json::Value::Object(per_class),
    );
    Ok((
        Dataset {
            task: c.task,
            labels: spec,
            splits,
            ctr: ctr.cloned(),
        },
        metrics,
    ))
}

impl NodeKind for DatasetNode {
    type Config = DatasetConfig;
    const KIND: &'static str = "dataset";
    const VERSION: &'static str = "2";
    const ABOUT: &'static str = "Reads train/dev/test (JSONL, CSV, TSV, Parquet) and a label spec; checks every row; writes a typed dataset.";

    fn outputs(_: &DatasetConfig) -> Vec<String> {
        vec!["dataset".into()]
    }

    fn files(c: &DatasetConfig) -> Vec<PathBuf> {
        if c.in_input {
            return Vec::new(); // the input's digest covers them
        }
        let mut f = vec![c.train.clone()];
        f.extend(c.dev.iter().cloned());
        f.extend(c.test.iter().cloned());
        f.extend(c.badcase.iter().cloned());
        f.extend(c.labels.iter().cloned());
        if c.task == relabel_tasks::task::TaskKind::Detection {
            // The images: the folder named, or each annotation file's folder.
            match &c.image_dir {
                Some(d) => f.push(d.clone()),
                None => {
                    let mut dirs: Vec<PathBuf> = f
                        .iter()
                        .filter(|p| p.extension().is_some())
                        .map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default())
                        .collect();
                    dirs.sort();
                    dirs.dedup();
                    f.extend(dirs);
                }
            }
        }
        f
    }

    fn check(c: &DatasetConfig, inputs: &[String]) -> Vec<relabel_engine::plugin::ConfigProblem> {
        let mut p = Vec::new();
        if c.in_input != (inputs.len() == 1) || inputs.len() > 1 {
            p.push(relabel_engine::plugin::ConfigProblem::new(
                relabel_engine::span::Path::root().key("in_input"),
                format!("`in_input: true` goes with exactly one input (a folder holding the files); this node has {} input(s) and in_input: {}", inputs.len(), c.in_input),
            ));
        }
        if !(0.0..1.0).contains(&c.dev_fraction) || (c.dev.is_none() && c.dev_fraction == 0.0) {
            p.push(relabel_engine::plugin::ConfigProblem::new(
                relabel_engine::span::Path::root().key("dev_fraction"),
                "must be above 0 and below 1 when there is no `dev` file",
            ));
        }
        let at = relabel_engine::span::Path::root().key("badcase_fraction");
        if !(0.0..1.0).contains(&c.badcase_fraction) {
            p.push(relabel_engine::plugin::ConfigProblem::new(
                at,
                "must be at least 0 and below 1",
            ));
        } else if c.badcase_fraction > 0.0 && c.badcase.is_some() {
            p.push(relabel_engine::plugin::ConfigProblem::new(
                at,
                "give a `badcase` file or a badcase_fraction of the test split, not both",
            ));
        } else if c.badcase_fraction > 0.0 && c.test.is_none() {
            p.push(relabel_engine::plugin::ConfigProblem::new(
                at,
                "takes its rows from the test split; this dataset has no `test` file",
            ));
        }
        p
    }

    async fn run(
        &self,
        ctx: NodeContext,
        c: DatasetConfig,
        inputs: Inputs,
    ) -> Result<NodeOutput, NodeError> {
        let dir = match inputs.values().next() {
            Some(a) if c.in_input => a.path.clone(),
            _ => ctx.manifest_dir.clone(),
        };
        let out = ctx.output_path("dataset");
        let out2 = out.clone();
        let metrics = tokio::task::spawn_blocking(move || -> Result<Metrics, String> {
            let (ds, metrics) = build_into(&c, &dir, Some(&out2))?;
            ds.write(&out2)
                .map_err(|e| format!("writing the dataset: {e}"))?;
            Ok(metrics)
        })
        .await
        .map_err(|e| NodeError::Failed(e.to_string()))?
        .map_err(NodeError::Failed)?;
        Ok(NodeOutput {
            outputs: [("dataset".to_string(), out)].into(),
            metrics,
        })
    }
}
