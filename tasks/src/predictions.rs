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
}

impl SplitPredictions {
    pub fn rows(&self) -> usize {
        self.label.len()
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
        }
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
        if ids.len() != self.rows() || names.len() != self.classes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {} rows x {} classes of predictions, but {} ids and {} label names",
                    path.display(),
                    self.rows(),
                    self.classes,
                    ids.len(),
                    names.len()
                ),
            ));
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

    /// Reads one split's predictions for `split` of a dataset with `classes` labels. Only `probs`
    /// is required (and `id`, when present, must match the split's ids row by row; `fold`
    /// defaults to -1); the other columns are derived again from `probs` and the split's labels,
    /// so predictions written by another trainer read the same as ours.
    pub fn read(path: &Path, split: &crate::data::Split, classes: usize) -> io::Result<Self> {
        let bad = |msg: String| {
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
        let probs = t.float_rows("probs", classes)?;
        let fold = if t.has("fold") {
            t.ints("fold")?
                .into_iter()
                .map(|f| i32::try_from(f).unwrap_or(-1))
                .collect()
        } else {
            vec![-1; split.len()]
        };
        Ok(SplitPredictions::from_probs(
            classes,
            probs,
            split.labels.clone(),
            fold,
        ))
    }
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
