//! Flags: rows suspected of a wrong label, each with exactly two candidate labels to choose from.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A flagged row and its two candidates: the given label and the model's best other label.
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
}

pub(crate) fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
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
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for flag in flags {
        serde_json::to_writer(&mut f, flag)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

/// Reads flags written by [`write`]; errors name the line.
pub fn read(path: &Path) -> std::io::Result<Vec<Flag>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for (i, line) in f.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), i + 1),
            )
        })?);
    }
    Ok(out)
}
