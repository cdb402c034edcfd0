//! The domain model of a labelled text dataset: label specs, splits, and their on-disk artifact.
//! The fixed test split is never relabelled: [`relabelable`] is the one check.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::task::TaskKind;

/// One label: its name, what it means, and a few examples (prompts show only these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelDef {
    pub name: String,
    #[serde(default)]
    pub definition: String,
    #[serde(default)]
    pub examples: Vec<String>,
}

/// The label set, in a fixed order: a label's index is its class id.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub labels: Vec<LabelDef>,
    /// Name -> index, built on first lookup (100,000 labels made linear lookups quadratic).
    #[serde(skip)]
    #[schemars(skip)]
    by_name: std::sync::OnceLock<(usize, std::collections::HashMap<String, u32>)>,
}

impl PartialEq for LabelSpec {
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels
    }
}

impl LabelSpec {
    /// Reads a `labels.yaml`; errors say file:line:col.
    pub fn load(path: &Path) -> Result<LabelSpec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec: LabelSpec = serde_yaml::from_str(&text).map_err(|e| match e.location() {
            Some(l) => format!(
                "{}:{}:{}: {}",
                path.display(),
                l.line(),
                l.column(),
                e.to_string().split(" at line ").next().unwrap_or("")
            ),
            None => format!("{}: {e}", path.display()),
        })?;
        if spec.labels.len() < 2 {
            return Err(format!(
                "{}: a label spec needs at least two labels",
                path.display()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for l in &spec.labels {
            if l.name.trim().is_empty() {
                return Err(format!("{}: a label has an empty name", path.display()));
            }
            if !seen.insert(l.name.as_str()) {
                return Err(format!(
                    "{}: label \"{}\" is defined twice",
                    path.display(),
                    l.name
                ));
            }
        }
        Ok(spec)
    }

    /// A spec from bare names (no definitions): used when the data carries labels but no spec was given.
    pub fn from_names(names: impl IntoIterator<Item = String>) -> LabelSpec {
        LabelSpec::new(
            names
                .into_iter()
                .map(|name| LabelDef {
                    name,
                    definition: String::new(),
                    examples: Vec::new(),
                })
                .collect(),
        )
    }

    /// A spec of these labels, in this order.
    pub fn new(labels: Vec<LabelDef>) -> LabelSpec {
        LabelSpec {
            labels,
            by_name: Default::default(),
        }
    }

    pub fn index(&self, name: &str) -> Option<u32> {
        let linear = || {
            self.labels
                .iter()
                .position(|l| l.name == name)
                .map(|i| i as u32)
        };
        if self.labels.len() <= 16 {
            return linear();
        }
        let (len, map) = self.by_name.get_or_init(|| {
            let mut m = std::collections::HashMap::with_capacity(self.labels.len());
            for (i, l) in self.labels.iter().enumerate().rev() {
                m.insert(l.name.clone(), i as u32);
            }
            (self.labels.len(), m)
        });
        if *len != self.labels.len() {
            // The list changed after the index was built: do not trust it.
            return linear();
        }
        map.get(name).copied()
    }

    pub fn names(&self) -> Vec<&str> {
        self.labels.iter().map(|l| l.name.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// One split's rows, column by column: ids, texts and the task's labels. Every task has a text
/// per row (for tagging, the tokens joined by spaces), so that embedding, mining and showing
/// rows work the same for all; the label columns are the task's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    /// Classification: each row's label index (empty for other tasks).
    pub labels: Vec<u32>,
    /// Tagging: each row's tokens and their IOB2 tag indices ([`crate::tagging::tag_names`]).
    pub tokens: Vec<Vec<String>>,
    pub tags: Vec<Vec<u32>>,
    /// Generation: each row's target text (`texts` holds the sources).
    pub targets: Vec<String>,
    /// Detection: each row's image size (`texts` holds the image paths) and annotated boxes.
    pub sizes: Vec<[u32; 2]>,
    pub boxes: Vec<Vec<crate::detection::BBox>>,
}

/// A detection split from its table: every box inside its image, with a positive area and a
/// class of the spec (errors name the row and box).
fn read_detection(t: &crate::table::Table, path: &Path, spec: &LabelSpec) -> io::Result<Split> {
    let (xs, lens) = t.float_row_lists("boxes", 4)?;
    let labels = t.string_lists("box_labels")?;
    let (w, h) = (t.ints("width")?, t.ints("height")?);
    let mut boxes = Vec::with_capacity(lens.len());
    let mut at = 0;
    for (i, (&n, names)) in lens.iter().zip(&labels).enumerate() {
        if names.len() != n {
            return Err(bad(format!(
                "{}: row {i}: {n} boxes but {} box labels",
                path.display(),
                names.len()
            )));
        }
        let mut row = Vec::with_capacity(n);
        for (j, name) in names.iter().enumerate() {
            let c = &xs[at..at + 4];
            at += 4;
            let class = spec.index(name).ok_or_else(|| {
                bad(format!(
                    "{}: row {i}, box {j}: \"{name}\" is not a label of the spec",
                    path.display()
                ))
            })?;
            let b = crate::detection::BBox {
                class,
                xmin: c[0],
                ymin: c[1],
                xmax: c[2],
                ymax: c[3],
            };
            crate::detection::check_box(&b, w[i] as f64, h[i] as f64)
                .map_err(|e| bad(format!("{}: row {i}, box {j}: {e}", path.display())))?;
            row.push(b);
        }
        boxes.push(row);
    }
    Ok(Split {
        ids: t.strings("id")?,
        texts: t.strings("text")?,
        sizes: w
            .iter()
            .zip(&h)
            .map(|(&w, &h)| [w.max(0) as u32, h.max(0) as u32])
            .collect(),
        boxes,
        ..Default::default()
    })
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Split {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Writes the split as Parquet: columns `id` and `text` (strings) and, for classification,
    /// `label` (the label's name, dictionary-encoded); for tagging, `tokens` and `tags` (lists
    /// of strings, IOB2 tag names); for generation, `target` (the target text; `text` is the source);
    /// for detection, `width` and `height` (the image's pixels; `text` is its path), `boxes`
    /// (a list of `[xmin, ymin, xmax, ymax]` per row) and `box_labels` (their class names).
    pub fn write(&self, path: &Path, spec: &LabelSpec, task: TaskKind) -> io::Result<()> {
        if task == TaskKind::Detection {
            let names = spec.names();
            let mut xs = Vec::new();
            let mut labels = Vec::with_capacity(self.boxes.len());
            for (i, bs) in self.boxes.iter().enumerate() {
                let mut l = Vec::with_capacity(bs.len());
                for b in bs {
                    let Some(n) = names.get(b.class as usize) else {
                        return Err(bad(format!(
                            "{}: row {i}: class id {} is outside the spec's {} labels",
                            path.display(),
                            b.class,
                            names.len()
                        )));
                    };
                    xs.extend([b.xmin, b.ymin, b.xmax, b.ymax]);
                    l.push(n.to_string());
                }
                labels.push(l);
            }
            let lens: Vec<usize> = self.boxes.iter().map(Vec::len).collect();
            let w: Vec<i32> = self.sizes.iter().map(|s| s[0] as i32).collect();
            let h: Vec<i32> = self.sizes.iter().map(|s| s[1] as i32).collect();
            return crate::table::TableWriter::new()
                .strings("id", &self.ids)
                .strings("text", &self.texts)
                .i32s("width", &w)
                .i32s("height", &h)
                .f32_row_lists("boxes", &xs, &lens, 4)
                .string_lists("box_labels", &labels)
                .write(path);
        }
        if task == TaskKind::Generation {
            return crate::table::TableWriter::new()
                .strings("id", &self.ids)
                .strings("text", &self.texts)
                .strings("target", &self.targets)
                .write(path);
        }
        if task == TaskKind::Tagging {
            let names = crate::tagging::tag_names(spec);
            let tags: Vec<Vec<String>> = self
                .tags
                .iter()
                .map(|t| t.iter().map(|&k| names[k as usize].clone()).collect())
                .collect();
            return crate::table::TableWriter::new()
                .strings("id", &self.ids)
                .strings("text", &self.texts)
                .string_lists("tokens", &self.tokens)
                .string_lists("tags", &tags)
                .write(path);
        }
        let names = spec.names();
        if let Some(&y) = self.labels.iter().find(|&&y| y as usize >= names.len()) {
            return Err(bad(format!(
                "{}: label id {y} is outside the spec's {} labels",
                path.display(),
                names.len()
            )));
        }
        crate::table::TableWriter::new()
            .strings("id", &self.ids)
            .strings("text", &self.texts)
            .categories("label", &self.labels, &names)
            .write(path)
    }

    /// Reads a split written by [`Split::write`] (or by pandas, polars, DuckDB: the same
    /// columns; `label` holds names of the spec's labels).
    pub fn read(path: &Path, spec: &LabelSpec, task: TaskKind) -> io::Result<Split> {
        let t = crate::table::Table::read(path)?;
        if task == TaskKind::Detection {
            return read_detection(&t, path, spec);
        }
        if task == TaskKind::Generation {
            return Ok(Split {
                ids: t.strings("id")?,
                texts: t.strings("text")?,
                targets: t.strings("target")?,
                ..Default::default()
            });
        }
        if task == TaskKind::Tagging {
            let tokens = t.string_lists("tokens")?;
            let raw = t.string_lists("tags")?;
            let mut tags = Vec::with_capacity(raw.len());
            for (i, (tk, tg)) in tokens.iter().zip(&raw).enumerate() {
                if tk.len() != tg.len() {
                    return Err(bad(format!(
                        "{}: row {i}: {} tokens but {} tags",
                        path.display(),
                        tk.len(),
                        tg.len()
                    )));
                }
                let strs: Vec<&str> = tg.iter().map(String::as_str).collect();
                let (ids, problems) =
                    crate::tagging::read_tags(&strs, crate::tagging::Scheme::Iob2, spec, &|_| None);
                if let Some(p) = problems.first() {
                    return Err(bad(format!(
                        "{}: row {i}, token {}: {}",
                        path.display(),
                        p.token,
                        p.message
                    )));
                }
                tags.push(ids);
            }
            return Ok(Split {
                ids: t.strings("id")?,
                texts: t.strings("text")?,
                tokens,
                tags,
                ..Default::default()
            });
        }
        Ok(Split {
            ids: t.strings("id")?,
            texts: t.strings("text")?,
            labels: t.categories("label", |n| spec.index(n))?,
            ..Default::default()
        })
    }

    /// Keeps the rows `keep` says yes to (every column the task has).
    pub fn retain_rows(&mut self, keep: impl Fn(usize) -> bool) {
        fn retain<T>(v: &mut Vec<T>, keep: &impl Fn(usize) -> bool) {
            let mut i = 0;
            v.retain(|_| (keep(i), i += 1).0);
        }
        retain(&mut self.ids, &keep);
        retain(&mut self.texts, &keep);
        retain(&mut self.labels, &keep);
        retain(&mut self.tokens, &keep);
        retain(&mut self.tags, &keep);
        retain(&mut self.targets, &keep);
        retain(&mut self.sizes, &keep);
        retain(&mut self.boxes, &keep);
    }

    /// Appends row `i` of `other` (every column the task has).
    pub fn push_row(&mut self, other: &Split, i: usize) {
        self.ids.push(other.ids[i].clone());
        self.texts.push(other.texts[i].clone());
        if let Some(&l) = other.labels.get(i) {
            self.labels.push(l);
        }
        if let Some(t) = other.tokens.get(i) {
            self.tokens.push(t.clone());
        }
        if let Some(t) = other.tags.get(i) {
            self.tags.push(t.clone());
        }
        if let Some(t) = other.targets.get(i) {
            self.targets.push(t.clone());
        }
        if let Some(&s) = other.sizes.get(i) {
            self.sizes.push(s);
        }
        if let Some(b) = other.boxes.get(i) {
            self.boxes.push(b.clone());
        }
    }
}

/// The folder of a dataset artifact holding the files its rows refer to (detection's images,
/// named by their content).
pub const IMAGES_DIR: &str = "images";

/// Carries the files a dataset's rows refer to from the artifact `from` into a derived version
/// `to` (hard links where the file system allows, else copies): a new version of a detection
/// dataset refers to the same images. Nothing to carry is not an error.
pub fn carry_images(from: &Path, to: &Path) -> io::Result<()> {
    let src = from.join(IMAGES_DIR);
    let Ok(entries) = std::fs::read_dir(&src) else {
        return Ok(());
    };
    let dst = to.join(IMAGES_DIR);
    std::fs::create_dir_all(&dst)?;
    for e in entries {
        let e = e?;
        let target = dst.join(e.file_name());
        if target.exists() {
            continue;
        }
        if std::fs::hard_link(e.path(), &target).is_err() {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// A dataset version's record of the pairs a judge has decided (JSON lines of [`Judged`]),
/// written by `apply_labels` next to the splits and carried into each later version.
pub const JUDGED_FILE: &str = "judged.jsonl";

/// One decided question: a row and the two labels it was asked to choose between.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Judged {
    pub split: String,
    pub id: String,
    /// The row's label and the candidate, as asked.
    pub pair: [String; 2],
    pub chosen: String,
}

/// The judged pairs recorded in dataset folder `dir` (none when it has no record).
pub fn read_judged(dir: &Path) -> io::Result<Vec<Judged>> {
    match crate::io::read_jsonl(&dir.join(JUDGED_FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// The split that is the fixed yardstick: never flagged, mined, judged or changed.
pub const FIXED_SPLIT: &str = "test";

/// Human-labelled rows kept apart from the fixed test for the badcase loop to mine: scored every
/// round and never relabelled, so that mining them leaves the fixed test unbiased.
pub const BADCASE_SPLIT: &str = "badcase";

/// Why a row of a human-labelled yardstick split cannot be relabelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixedSplit {
    #[error("the {FIXED_SPLIT} split is the fixed yardstick and is never relabelled")]
    Test,
    #[error(
        "the {BADCASE_SPLIT} split holds human labels for mining badcases and is never relabelled"
    )]
    Badcase,
}

/// The one check that a split may be relabelled (flagged, mined, judged, changed).
pub fn relabelable(split: &str) -> Result<(), FixedSplit> {
    match split {
        FIXED_SPLIT => Err(FixedSplit::Test),
        BADCASE_SPLIT => Err(FixedSplit::Badcase),
        _ => Ok(()),
    }
}

/// The file in a dataset folder that names its task and splits.
pub const SPLITS_FILE: &str = "dataset.json";

/// The file of split `name` in a dataset folder (and in a predictions folder).
pub fn split_file(name: &str) -> String {
    format!("{name}.parquet")
}

/// The split names a dataset may have, in order.
pub const SPLITS: [&str; 4] = ["train", "dev", "test", BADCASE_SPLIT];

/// A dataset artifact: a folder with `dataset.json` (task, splits), `labels.json` and one
/// `SPLIT.parquet` per split (columns: see [`Split::write`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// What a label is in this dataset; nodes read it from the artifact and dispatch once.
    pub task: crate::task::TaskKind,
    pub labels: LabelSpec,
    pub splits: BTreeMap<String, Split>,
    /// CTR: the feature fields and their roles (recorded in `dataset.json`).
    pub ctr: Option<crate::ctr::CtrFields>,
}

impl Dataset {
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("labels.json"),
            serde_json::to_vec_pretty(&self.labels)?,
        )?;
        for (name, s) in &self.splits {
            s.write(&dir.join(split_file(name)), &self.labels, self.task)?;
        }
        let names: Vec<&String> = self.splits.keys().collect();
        std::fs::write(
            dir.join(SPLITS_FILE),
            serde_json::to_vec(&match &self.ctr {
                Some(f) => serde_json::json!({ "task": self.task, "splits": names, "ctr": f }),
                None => serde_json::json!({ "task": self.task, "splits": names }),
            })?,
        )?;
        Ok(())
    }

    /// Reads a dataset folder. Every split its `dataset.json` names must be there: a missing one
    /// is an error, not an empty split (folders written before that record read what they have).
    pub fn read(dir: &Path) -> io::Result<Dataset> {
        let labels: LabelSpec = serde_json::from_slice(&std::fs::read(dir.join("labels.json"))?)
            .map_err(|e| bad(format!("{}/labels.json: {e}", dir.display())))?;
        let mut recorded_task = crate::task::TaskKind::default();
        let mut ctr = None;
        let recorded: Option<Vec<String>> = match std::fs::read(dir.join(SPLITS_FILE)) {
            Ok(b) => {
                let shown =
                    |e: serde_json::Error| bad(format!("{}/{SPLITS_FILE}: {e}", dir.display()));
                let v: serde_json::Value = serde_json::from_slice(&b).map_err(shown)?;
                if !v["task"].is_null() {
                    recorded_task = serde_json::from_value(v["task"].clone()).map_err(shown)?;
                }
                if !v["ctr"].is_null() {
                    ctr = Some(serde_json::from_value(v["ctr"].clone()).map_err(shown)?);
                }
                Some(serde_json::from_value(v["splits"].clone()).map_err(shown)?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut splits = BTreeMap::new();
        for name in SPLITS {
            let p = dir.join(split_file(name));
            let expected = recorded
                .as_ref()
                .is_some_and(|r| r.iter().any(|s| s == name));
            if p.exists() {
                splits.insert(name.to_string(), Split::read(&p, &labels, recorded_task)?);
            } else if expected {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{}: the dataset has a {name} split but {name}.parquet is missing (the artifact is damaged; `relabel cache verify` evicts it)",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(Dataset {
            task: recorded_task,
            labels,
            splits,
            ctr,
        })
    }

    pub fn split(&self, name: &str) -> Option<&Split> {
        self.splits.get(name)
    }

    /// Probabilities per prediction row: one per label (classification) or, per token, one per
    /// tag (tagging: O and B-/I- of each type); none for generation (an output text instead).
    pub fn prediction_width(&self) -> usize {
        match self.task {
            TaskKind::Classification | TaskKind::Ctr => self.labels.len(),
            TaskKind::Tagging => crate::tagging::tag_names(&self.labels).len(),
            TaskKind::Generation | TaskKind::Detection => 0,
        }
    }
}

/// A stable id for a row without an id column: a digest of its text (and of its repeat count,
/// when the same text occurs more than once).
pub fn content_id(text: &str, occurrence: usize) -> String {
    let mut h = blake3::Hasher::new();
    h.update(text.as_bytes());
    if occurrence > 0 {
        h.update(&(occurrence as u64).to_le_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_round_trip_through_parquet() {
        let s = Split {
            ids: vec!["a".into(), "b".into(), "ü".into()],
            texts: vec!["hello".into(), String::new(), "naïve café".into()],
            labels: vec![0, 2, 1],
            ..Default::default()
        };
        let spec = LabelSpec::from_names(["x", "y", "z"].map(String::from));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.parquet");
        s.write(&p, &spec, TaskKind::Classification).unwrap();
        assert_eq!(Split::read(&p, &spec, TaskKind::Classification).unwrap(), s);
        // Read against a spec without "z": the row is named.
        let other = LabelSpec::from_names(["x", "y"].map(String::from));
        let e = Split::read(&p, &other, TaskKind::Classification)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1") && e.contains("\"z\""), "{e}");
        // A truncated file is an error, not a short split.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(Split::read(&p, &spec, TaskKind::Classification).is_err());
    }

    #[test]
    fn a_dataset_missing_a_split_it_records_fails_to_read() {
        let split = Split {
            ids: vec!["a".into()],
            texts: vec!["hello".into()],
            labels: vec![0],
            ..Default::default()
        };
        let d = Dataset {
            task: Default::default(),
            labels: LabelSpec::from_names(["x".to_string()]),
            splits: [
                ("train".to_string(), split.clone()),
                ("dev".to_string(), split),
            ]
            .into(),
            ctr: None,
        };
        let dir = tempfile::tempdir().unwrap();
        d.write(dir.path()).unwrap();
        assert_eq!(Dataset::read(dir.path()).unwrap(), d);
        std::fs::remove_file(dir.path().join("train.parquet")).unwrap();
        let e = Dataset::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("train.parquet is missing"), "{e}");
    }

    #[test]
    fn a_million_rows_reload_in_well_under_a_second() {
        let n = 1_000_000;
        let s = Split {
            ids: (0..n).map(|i| format!("row{i}")).collect(),
            texts: (0..n)
                .map(|i| format!("how do I top up my card with {i} pounds please"))
                .collect(),
            labels: (0..n).map(|i| (i % 77) as u32).collect(),
            ..Default::default()
        };
        let spec = LabelSpec::from_names((0..77).map(|i| format!("class{i}")));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.parquet");
        s.write(&p, &spec, TaskKind::Classification).unwrap();
        let t0 = std::time::Instant::now();
        let back = Split::read(&p, &spec, TaskKind::Classification).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(back.len(), n);
        assert_eq!(back.texts[123_456], s.texts[123_456]);
        assert_eq!(back.labels[999_999], s.labels[999_999]);
        // Generous for a loaded CI machine and a debug build; see `cargo xtask bench artifacts`.
        assert!(secs < 2.0, "reloading 1M rows took {secs:.2} s");
    }
}
