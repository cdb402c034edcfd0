//! Self-predictions: class probabilities for every row of a split, in a compact binary artifact.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"RLPRED01";

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
            let mut best = 0;
            for (j, p) in row.iter().enumerate() {
                if *p > row[best] {
                    best = j;
                }
            }
            predicted.push(best as u32);
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

    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut out = Vec::with_capacity(24 + self.probs.len() * 4 + self.rows() * 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.rows() as u64).to_le_bytes());
        out.extend_from_slice(&(self.classes as u64).to_le_bytes());
        crate::le::extend(&mut out, &self.probs);
        crate::le::extend(&mut out, &self.predicted);
        crate::le::extend(&mut out, &self.label);
        crate::le::extend(&mut out, &self.label_prob);
        crate::le::extend(&mut out, &self.loss);
        crate::le::extend(&mut out, &self.fold);
        std::fs::write(path, out)
    }

    pub fn read(path: &Path) -> io::Result<Self> {
        let b = std::fs::read(path)?;
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a relabel predictions file", path.display()),
            )
        };
        if b.len() < 24 || &b[..8] != MAGIC {
            return Err(bad());
        }
        let n = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")) as usize;
        let c = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")) as usize;
        let need = n
            .checked_mul(c)
            .and_then(|nc| nc.checked_add(n * 5))
            .and_then(|w| w.checked_mul(4))
            .ok_or_else(bad)?;
        if b.len() != 24 + need {
            return Err(bad());
        }
        let mut at = 24;
        let mut take = |words: usize| {
            let s = &b[at..at + words * 4];
            at += words * 4;
            s
        };
        let probs = crate::le::collect(take(n * c));
        let predicted = crate::le::collect(take(n));
        let label = crate::le::collect(take(n));
        let label_prob = crate::le::collect(take(n));
        let loss = crate::le::collect(take(n));
        let fold = crate::le::collect(take(n));
        Ok(SplitPredictions {
            classes: c,
            probs,
            predicted,
            label,
            label_prob,
            loss,
            fold,
        })
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
        p.write(&dir.path().join("x.bin")).unwrap();
        assert_eq!(
            SplitPredictions::read(&dir.path().join("x.bin")).unwrap(),
            p
        );
    }
}
