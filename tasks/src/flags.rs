//! Flags: rows suspected of a wrong label, each with exactly two candidate labels to choose from.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A flagged row and its two candidates: the given label and the model's best other label (for
/// tagging, the two readings' titles of one span).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub split: String,
    /// Row index in the dataset split.
    pub row: usize,
    pub id: String,
    pub text: String,
    /// The current label (candidate A).
    pub label: String,
    /// The model's best label other than the current one (candidate B).
    pub candidate: String,
    /// The model's probabilities of the two (NaN, written as null, when no model scored them,
    /// as for rows mined by similarity).
    #[serde(deserialize_with = "null_as_nan")]
    pub label_prob: f32,
    #[serde(deserialize_with = "null_as_nan")]
    pub candidate_prob: f32,
    /// How suspicious the row is under the ranking in use (higher: more suspicious).
    pub score: f64,
    /// The rule that flagged it (the first that fired, in config order), or `all_rows`.
    pub rule: String,
    /// Where in the row the dispute is, as the task writes it (tagging: the token span and its
    /// two readings); absent for classification, whose dispute is the whole row.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub site: serde_json::Value,
}

/// Reads `null` as NaN (a probability no model gave).
pub fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

impl Flag {
    /// The two labels the judge chooses between.
    pub fn candidates(&self) -> [&str; 2] {
        [&self.label, &self.candidate]
    }
}

/// Writes flags as JSON lines.
pub fn write(path: &Path, flags: &[Flag]) -> std::io::Result<()> {
    crate::io::write_jsonl(path, flags)
}

/// Reads flags written by [`write`]; errors name the line.
pub fn read(path: &Path) -> std::io::Result<Vec<Flag>> {
    crate::io::read_jsonl(path)
}
