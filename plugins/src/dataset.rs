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

/// How a data file is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// From the file name: .jsonl/.ndjson, .csv, .tsv, .parquet.
    #[default]
    Auto,
    Jsonl,
    Csv,
    Tsv,
    Parquet,
}

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

/// A row as read from a file, before checks. `row` is 1-based (the line number for JSONL/CSV).
#[derive(Debug, Clone)]
pub struct RawRow {
    pub row: usize,
    pub id: Option<String>,
    pub text: Option<String>,
    pub label: Option<String>,
    /// Why the row could not be read at all (a truncated or malformed JSON line): a bad row,
    /// skipped or refused per `on_bad_row` like any other.
    pub unreadable: Option<String>,
}

impl RawRow {
    fn unreadable(row: usize, why: String) -> RawRow {
        RawRow {
            row,
            id: None,
            text: None,
            label: None,
            unreadable: Some(why),
        }
    }
}

fn format_of(path: &Path, f: Format) -> Result<Format, String> {
    if f != Format::Auto {
        return Ok(f);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json") {
        Ok(Format::Jsonl)
    } else if name.ends_with(".csv") {
        Ok(Format::Csv)
    } else if name.ends_with(".tsv") || name.ends_with(".txt") {
        Ok(Format::Tsv)
    } else if name.contains(".parquet") {
        Ok(Format::Parquet)
    } else {
        Err(format!(
            "{}: cannot tell the format from the name; set `format: jsonl | csv | tsv | parquet`",
            path.display()
        ))
    }
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads every row of a data file. A file-level problem (unreadable, missing column in a
/// header) is an error; row-level problems are left for [`check_rows`].
pub fn read_rows(path: &Path, format: Format, c: &DatasetConfig) -> Result<Vec<RawRow>, String> {
    let shown = path.display();
    match format_of(path, format)? {
        Format::Jsonl => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let mut rows = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = match serde_json::from_str(line) {
                    Ok(v @ serde_json::Value::Object(_)) => v,
                    Ok(_) => {
                        rows.push(RawRow::unreadable(i + 1, "not a JSON object".into()));
                        continue;
                    }
                    Err(e) => {
                        rows.push(RawRow::unreadable(i + 1, format!("not a JSON object: {e}")));
                        continue;
                    }
                };
                let get = |k: &str| v.get(k).and_then(scalar);
                rows.push(RawRow {
                    row: i + 1,
                    id: c.id_column.as_deref().and_then(get),
                    text: get(&c.text_column),
                    label: get(&c.label_column),
                    unreadable: None,
                });
            }
            Ok(rows)
        }
        f @ (Format::Csv | Format::Tsv) => {
            let mut rdr = csv::ReaderBuilder::new()
                .delimiter(if f == Format::Tsv { b'\t' } else { b',' })
                .flexible(true)
                .from_path(path)
                .map_err(|e| format!("{shown}: {e}"))?;
            let headers = rdr.headers().map_err(|e| format!("{shown}: {e}"))?.clone();
            let col = |name: &str| -> Result<usize, String> {
                headers.iter().position(|h| h == name).ok_or_else(|| {
                    let have: Vec<&str> = headers.iter().collect();
                    format!(
                        "{shown}:1: missing column \"{name}\" ({}){}",
                        crate::clip::header_shape(&have),
                        did_you_mean(name, have.iter().copied())
                            .map(|h| format!("; {h}"))
                            .unwrap_or_default()
                    )
                })
            };
            let ti = col(&c.text_column)?;
            let li = col(&c.label_column)?;
            let ii = c.id_column.as_deref().map(col).transpose()?;
            let mut rows = Vec::new();
            for rec in rdr.records() {
                let rec = rec.map_err(|e| format!("{shown}: {e}"))?;
                let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
                let get = |i: usize| rec.get(i).map(str::to_string);
                rows.push(RawRow {
                    row: line,
                    id: ii.and_then(get),
                    text: get(ti),
                    label: get(li),
                    unreadable: None,
                });
            }
            Ok(rows)
        }
        Format::Parquet => read_parquet(path, c),
        Format::Auto => unreachable!("resolved above"),
    }
}

fn read_parquet(path: &Path, c: &DatasetConfig) -> Result<Vec<RawRow>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("{shown}: {e}"))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let names: Vec<String> = schema
        .columns()
        .iter()
        .map(|col| col.name().to_string())
        .collect();
    for name in [
        Some(&c.text_column),
        Some(&c.label_column),
        c.id_column.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if !names.contains(name) {
            return Err(format!(
                "{shown}: missing column \"{name}\" (columns: {})",
                names.join(", ")
            ));
        }
    }
    let mut rows = Vec::new();
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| format!("{shown}: {e}"))?;
    for (i, row) in iter.enumerate() {
        let row = row.map_err(|e| format!("{shown}: row {}: {e}", i + 1))?;
        let mut r = RawRow {
            row: i + 1,
            id: None,
            text: None,
            label: None,
            unreadable: None,
        };
        for (name, field) in row.get_column_iter() {
            let v = match field {
                Field::Null => None,
                Field::Str(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            if name == &c.text_column {
                r.text = v;
            } else if name == &c.label_column {
                r.label = v;
            } else if Some(name) == c.id_column.as_ref() {
                r.id = v;
            }
        }
        rows.push(r);
    }
    Ok(rows)
}

/// A row that failed its checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRow {
    pub file: String,
    pub row: usize,
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// Builds the dataset from its config; `dir` is what relative paths are relative to.
pub fn build(c: &DatasetConfig, dir: &Path) -> Result<(Dataset, Metrics), String> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let train_path = resolve(&c.train);
    let train_rows = read_rows(&train_path, c.format, c)?;
    let spec = match &c.labels {
        Some(p) => LabelSpec::load(&resolve(p))?,
        None => {
            let mut names: Vec<String> = train_rows
                .iter()
                .filter_map(|r| r.label.as_ref().map(|l| l.trim().to_string()))
                .filter(|l| !l.is_empty())
                .collect();
            names.sort();
            names.dedup();
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
    for (name, path) in [("dev", &c.dev), ("test", &c.test)] {
        if let Some(p) = path {
            let rows = read_rows(&resolve(p), c.format, c)?;
            let (s, bad) = check_rows(&p.display().to_string(), rows, &spec, c, &mut seen);
            bad_rows.extend(bad);
            splits.insert(name.to_string(), s);
        }
    }
    if c.on_bad_row == OnBadRow::Fail && !bad_rows.is_empty() {
        let shown: Vec<String> = bad_rows.iter().take(20).map(|b| b.to_string()).collect();
        let more = if bad_rows.len() > 20 {
            format!("\n... and {} more", bad_rows.len() - 20)
        } else {
            String::new()
        };
        return Err(format!(
            "{} bad row{} (set `on_bad_row: skip` to leave them out):\n{}{more}",
            bad_rows.len(),
            if bad_rows.len() == 1 { "" } else { "s" },
            shown.join("\n")
        ));
    }
    if c.dev.is_none() {
        // Hold out a stable fraction of train, chosen by row id.
        let train = splits.remove("train").expect("train was read");
        let (mut keep, mut dev) = (Split::default(), Split::default());
        for i in 0..train.len() {
            let h = u64::from_str_radix(&blake3::hash(train.ids[i].as_bytes()).to_hex()[..12], 16)
                .unwrap_or(0);
            let target = if (h as f64 / (1u64 << 48) as f64) < c.dev_fraction {
                &mut dev
            } else {
                &mut keep
            };
            target.ids.push(train.ids[i].clone());
            target.texts.push(train.texts[i].clone());
            target.labels.push(train.labels[i]);
        }
        splits.insert("train".into(), keep);
        splits.insert("dev".into(), dev);
    }
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
        },
        metrics,
    ))
}

impl NodeKind for DatasetNode {
    type Config = DatasetConfig;
    const KIND: &'static str = "dataset";
    const VERSION: &'static str = "1";
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
        f.extend(c.labels.iter().cloned());
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
            let (ds, metrics) = build(&c, &dir)?;
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
