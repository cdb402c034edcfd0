//! Self-predictions: class probabilities for every row of a split, stored as Parquet (one
//! `SPLIT.parquet` per split) so an external trainer can write what the filter reads.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Predictions for one split, aligned with the dataset split's row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitPredictions {
    pub classes: usize,
    /// Row-major `rows x classes` probabilities.
    pub probs: Vec<f32>,
    /// The argmax class of each row.
    pub predicted: Vec<u32>,
    /// The given label of each row.
    pub label: Vec<u32>,
    /// The probability of the given label.
    pub label_prob: Vec<f32>,
    /// Cross-entropy of the given label: `-ln(label_prob)`.
    pub loss: Vec<f32>,
    /// For out-of-sample (k-fold) predictions, the fold whose model predicted the row (it never
    /// saw the row); -1 for in-sample predictions.
    pub fold: Vec<i32>,
    /// Tagging: the tokens of each dataset row. The other columns are then per token (the
    /// rows' tokens in order), so token-level rules read them as rows of a classification;
    /// empty for classification.
    pub lens: Vec<usize>,
    /// Generation: each row's decoded output. `label_prob` is then the target's mean
    /// per-token probability (the exp of its mean log-probability) and `loss` its negative
    /// mean log-probability; `probs`, `label` and `predicted` are empty.
    pub outputs: Vec<String>,
    /// Detection: each row's scored boxes, the model's most confident first (every other
    /// column but `fold` is empty).
    pub detections: Vec<Vec<crate::detection::ScoredBox>>,
}

impl SplitPredictions {
    pub fn rows(&self) -> usize {
        if !self.detections.is_empty() {
            self.detections.len()
        } else if self.outputs.is_empty() {
            self.label.len()
        } else {
            self.outputs.len()
        }
    }

    /// Generation predictions: outputs and the targets' mean log-probabilities per token.
    pub fn from_outputs(outputs: Vec<String>, target_logprob: &[f32], fold: Vec<i32>) -> Self {
        SplitPredictions {
            label_prob: target_logprob.iter().map(|l| l.exp()).collect(),
            loss: target_logprob.iter().map(|l| -l).collect(),
            outputs,
            fold,
            ..Default::default()
        }
    }

    /// Generation: row `i` as the task sees it.
    pub fn generated(&self, i: usize) -> crate::generation::GenPrediction {
        crate::generation::GenPrediction {
            output: self.outputs[i].clone(),
            target_logprob: -self.loss[i],
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.probs[i * self.classes..(i + 1) * self.classes]
    }

    /// Builds the derived columns from probabilities and labels.
    pub fn from_probs(classes: usize, probs: Vec<f32>, label: Vec<u32>, fold: Vec<i32>) -> Self {
        let n = label.len();
        let mut predicted = Vec::with_capacity(n);
        let mut label_prob = Vec::with_capacity(n);
        let mut loss = Vec::with_capacity(n);
        for i in 0..n {
            let row = &probs[i * classes..(i + 1) * classes];
            predicted.push(crate::classification::Classification::argmax(row));
            let p = row[label[i] as usize];
            label_prob.push(p);
            loss.push(-(p.max(1e-12)).ln());
        }
        SplitPredictions {
            classes,
            probs,
            predicted,
            label,
            label_prob,
            loss,
            fold,
            lens: Vec::new(),
            outputs: Vec::new(),
            detections: Vec::new(),
        }
    }

    /// Token-level predictions of a tagging split: `probs` is tokens x tags, `tags` the split's
    /// tags, `fold` per sentence.
    pub fn from_token_probs(
        ntags: usize,
        probs: Vec<f32>,
        tags: &[Vec<u32>],
        fold: &[i32],
    ) -> Self {
        let label: Vec<u32> = tags.iter().flatten().copied().collect();
        let token_fold: Vec<i32> = tags
            .iter()
            .zip(fold)
            .flat_map(|(t, &f)| std::iter::repeat_n(f, t.len()))
            .collect();
        let mut p = Self::from_probs(ntags, probs, label, token_fold);
        p.lens = tags.iter().map(Vec::len).collect();
        p
    }

    /// Tagging: where each dataset row's tokens start, then the total token count.
    pub fn token_starts(&self) -> Vec<usize> {
        let mut s = Vec::with_capacity(self.lens.len() + 1);
        s.push(0);
        for &l in &self.lens {
            s.push(s.last().copied().unwrap_or(0) + l);
        }
        s
    }

    pub fn accuracy(&self) -> f64 {
        if self.rows() == 0 {
            return 0.0;
        }
        self.predicted
            .iter()
            .zip(&self.label)
            .filter(|(p, l)| p == l)
            .count() as f64
            / self.rows() as f64
    }

    pub fn mean_loss(&self) -> f64 {
        if self.rows() == 0 {
            return 0.0;
        }
        self.loss.iter().map(|&l| l as f64).sum::<f64>() / self.rows() as f64
    }

    /// Writes the predictions as Parquet. Columns: `id` (the row's id), `probs` (a list of one
    /// float per label, in `labels.json` order), `fold` (int32; -1 in-sample), and for reading
    /// by eye `label` and `predicted` (names), `label_prob` and `loss`.
    pub fn write(&self, path: &Path, ids: &[String], names: &[&str]) -> io::Result<()> {
        if !self.outputs.is_empty() || (self.classes == 0 && names.is_empty()) {
            if ids.len() != self.outputs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: {} outputs but {} ids",
                        path.display(),
                        self.outputs.len(),
                        ids.len()
                    ),
                ));
            }
            let lp: Vec<f32> = self.loss.iter().map(|l| -l).collect();
            return crate::table::TableWriter::new()
                .strings("id", ids)
                .strings("output", &self.outputs)
                .f32s("target_logprob", &lp)
                .i32s("fold", &self.fold)
                .write(path);
        }
        let rows = if self.lens.is_empty() {
            self.rows()
        } else {
            self.lens.len()
        };
        if ids.len() != rows || names.len() != self.classes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {} rows x {} classes of predictions, but {} ids and {} label names",
                    path.display(),
                    rows,
                    self.classes,
                    ids.len(),
                    names.len()
                ),
            ));
        }
        if !self.lens.is_empty() {
            let starts = self.token_starts();
            let fold: Vec<i32> = starts[..self.lens.len()]
                .iter()
                .map(|&s| self.fold.get(s).copied().unwrap_or(-1))
                .collect();
            return crate::table::TableWriter::new()
                .strings("id", ids)
                .i32s("fold", &fold)
                .f32_row_lists("probs", &self.probs, &self.lens, self.classes)
                .write(path);
        }
        crate::table::TableWriter::new()
            .strings("id", ids)
            .categories("label", &self.label, names)
            .categories("predicted", &self.predicted, names)
            .f32s("label_prob", &self.label_prob)
            .f32s("loss", &self.loss)
            .i32s("fold", &self.fold)
            .f32_rows("probs", &self.probs, self.classes)
            .write(path)
    }

    /// Writes detection predictions as Parquet: `id`, `fold`, `boxes` (per row a list of
    /// `[xmin, ymin, xmax, ymax, score]`) and `box_labels` (their class names).
    pub fn write_detections(&self, path: &Path, ids: &[String], names: &[&str]) -> io::Result<()> {
        if ids.len() != self.detections.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {} rows of boxes but {} ids",
                    path.display(),
                    self.detections.len(),
                    ids.len()
                ),
            ));
        }
        let mut xs = Vec::new();
        let mut labels = Vec::with_capacity(ids.len());
        for row in &self.detections {
            let mut l = Vec::with_capacity(row.len());
            for d in row {
                let b = &d.bbox;
                xs.extend([b.xmin, b.ymin, b.xmax, b.ymax, d.score]);
                l.push(
                    names
                        .get(b.class as usize)
                        .map(|n| n.to_string())
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!("class id {} has no name", b.class),
                            )
                        })?,
                );
            }
            labels.push(l);
        }
        let lens: Vec<usize> = self.detections.iter().map(Vec::len).collect();
        crate::table::TableWriter::new()
            .strings("id", ids)
            .i32s("fold", &self.fold)
            .f32_row_lists("boxes", &xs, &lens, 5)
            .string_lists("box_labels", &labels)
            .write(path)
    }

    /// Reads detection predictions written by [`SplitPredictions::write_detections`] (or by
    /// another detector: the same columns) for `split`; class names must be the spec's.
    pub fn read_detections(
        path: &Path,
        split: &crate::data::Split,
        spec: &crate::data::LabelSpec,
    ) -> io::Result<Self> {
        let (t, fold, bad) = open_aligned(path, split)?;
        let classes = spec.labels.len();
        let (xs, lens) = t.float_row_lists("boxes", 5)?;
        let labels = t.string_lists("box_labels")?;
        let mut detections = Vec::with_capacity(lens.len());
        let mut at = 0;
        for (i, (&n, names)) in lens.iter().zip(&labels).enumerate() {
            if names.len() != n {
                return Err(bad(format!(
                    "row {i}: {n} boxes but {} box labels",
                    names.len()
                )));
            }
            let mut row = Vec::with_capacity(n);
            for name in names {
                let c = &xs[at..at + 5];
                at += 5;
                let class = spec.index(name).ok_or_else(|| {
                    bad(format!("row {i}: \"{name}\" is not a label of the dataset"))
                })?;
                row.push(crate::detection::ScoredBox {
                    bbox: crate::detection::BBox {
                        class,
                        xmin: c[0],
                        ymin: c[1],
                        xmax: c[2],
                        ymax: c[3],
                    },
                    score: c[4],
                });
            }
            detections.push(row);
        }
        Ok(SplitPredictions {
            classes,
            detections,
            fold,
            ..Default::default()
        })
    }

    /// Reads one split's predictions for `split` of a dataset with `classes` labels. Only `probs`
    /// is required (and `id`, when present, must match the split's ids row by row; `fold`
    /// defaults to -1); the other columns are derived again from `probs` and the split's labels,
    /// so predictions written by another trainer read the same as ours.
    pub fn read(path: &Path, split: &crate::data::Split, classes: usize) -> io::Result<Self> {
        let (t, fold, bad) = open_aligned(path, split)?;
        if !split.targets.is_empty() {
            let outputs = t.strings("output")?;
            let lp: Vec<f32> = if t.has("target_logprob") {
                t.floats("target_logprob")?
            } else {
                vec![0.0; outputs.len()]
            };
            return Ok(SplitPredictions::from_outputs(outputs, &lp, fold));
        }
        if !split.tokens.is_empty() {
            let (probs, lens) = t.float_row_lists("probs", classes)?;
            if let Some(i) = (0..lens.len()).find(|&i| lens[i] != split.tokens[i].len()) {
                return Err(bad(format!(
                    "row {i} (\"{}\"): {} rows of tag probabilities for {} tokens",
                    split.ids[i],
                    lens[i],
                    split.tokens[i].len()
                )));
            }
            return Ok(SplitPredictions::from_token_probs(
                classes,
                probs,
                &split.tags,
                &fold,
            ));
        }
        let probs = t.float_rows("probs", classes)?;
        Ok(SplitPredictions::from_probs(
            classes,
            probs,
            split.labels.clone(),
            fold,
        ))
    }
}

/// Opens a split's predictions table and checks it follows the split (as many rows, the same
/// ids in order when it has an `id` column); returns it with each row's fold (-1 without a
/// `fold` column) and the error maker for the file.
fn open_aligned<'a>(
    path: &'a Path,
    split: &crate::data::Split,
) -> io::Result<(
    crate::table::Table,
    Vec<i32>,
    impl Fn(String) -> io::Error + 'a,
)> {
    let bad = move |msg: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {msg}", path.display()),
        )
    };
    let t = crate::table::Table::read(path)?;
    if t.rows() != split.len() {
        return Err(bad(format!(
            "{} rows of predictions for a split of {} rows (made from another dataset version?)",
            t.rows(),
            split.len()
        )));
    }
    if t.has("id") {
        let ids = t.strings("id")?;
        if let Some(i) = (0..ids.len()).find(|&i| ids[i] != split.ids[i]) {
            return Err(bad(format!(
                "row {i}: id \"{}\", but the dataset's row {i} is \"{}\" (predictions must follow the split's row order)",
                ids[i], split.ids[i]
            )));
        }
    }
    let fold = if t.has("fold") {
        t.ints("fold")?
            .into_iter()
            .map(|f| i32::try_from(f).unwrap_or(-1))
            .collect()
    } else {
        vec![-1; split.len()]
    };
    Ok((t, fold, bad))
}

/// What `meta.json` of a predictions artifact says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PredictionsMeta {
    pub labels: Vec<String>,
    /// `in_sample` or `kfold`.
    pub mode: String,
    pub kfold: Option<usize>,
    pub splits: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_round_trip_and_derive_columns() {
        let p = SplitPredictions::from_probs(
            3,
            vec![0.7, 0.2, 0.1, 0.1, 0.3, 0.6],
            vec![0, 2],
            vec![-1, 1],
        );
        assert_eq!(p.predicted, vec![0, 2]);
        assert!((p.label_prob[1] - 0.6).abs() < 1e-6);
        assert!((p.loss[0] - (-(0.7f32).ln())).abs() < 1e-6);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.parquet");
        let split = crate::data::Split {
            ids: vec!["a".into(), "b".into()],
            texts: vec!["x".into(), "y".into()],
            labels: vec![0, 2],
            ..Default::default()
        };
        p.write(&path, &split.ids, &["p", "q", "r"]).unwrap();
        assert_eq!(SplitPredictions::read(&path, &split, 3).unwrap(), p);
        // Another dataset's rows, or another label count, are refused with the reason.
        let mut other = split.clone();
        other.ids[1] = "c".into();
        let e = SplitPredictions::read(&path, &other, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1") && e.contains("\"c\""), "{e}");
        let e = SplitPredictions::read(&path, &split, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 4"), "{e}");
    }
}
