//! Text classification, the first [`Task`]: the input is a text, the label one class, the
//! prediction a row of class probabilities; a dispute is the row, between its class and the
//! model's best other class; scores are accuracy, macro-F1, per-class P/R/F1 and the confusion.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::LabelSpec;
use crate::task::{Choice, Dispute, Question, QuestionOption, Stale, Task};

/// The classification task.
#[derive(Debug, Clone, Copy, Default)]
pub struct Classification;

impl Classification {
    /// The model's best class other than `y`, and its probability (the first of equals, as
    /// [`Classification::argmax`]); `None` with fewer than two classes.
    pub fn best_other(p: &[f32], y: u32) -> Option<(u32, f32)> {
        let y = y as usize;
        let mut best: Option<usize> = None;
        for (k, &q) in p.iter().enumerate() {
            if k != y && best.is_none_or(|b| q > p[b]) {
                best = Some(k);
            }
        }
        best.map(|k| (k as u32, p[k]))
    }

    /// The predicted class: the most probable, the first of equals.
    pub fn argmax(p: &[f32]) -> u32 {
        let mut best = 0;
        for (k, &q) in p.iter().enumerate() {
            if q > p[best] {
                best = k;
            }
        }
        best as u32
    }
}

impl Task for Classification {
    const KIND: &'static str = "classification";
    type Input = str;
    type Label = u32;
    type Prediction = [f32];
    type Site = ();
    type Scores = SplitScores;

    fn disputes(&self, _x: &str, y: &u32, p: &[f32], spec: &LabelSpec) -> Vec<Dispute<()>> {
        let Some((other, q)) = Self::best_other(p, *y) else {
            return Vec::new();
        };
        let own = p.get(*y as usize).copied().unwrap_or(0.0);
        if q <= own {
            return Vec::new();
        }
        vec![Dispute {
            site: (),
            options: [
                spec.labels[*y as usize].name.clone(),
                spec.labels[other as usize].name.clone(),
            ],
            score: f64::from(1.0 - own),
        }]
    }

    fn question(&self, x: &str, d: &Dispute<()>, spec: &LabelSpec, examples: usize) -> Question {
        let option = |title: &str| {
            let def = spec.index(title).map(|i| &spec.labels[i as usize]);
            QuestionOption {
                title: title.to_string(),
                definition: def.map(|l| l.definition.clone()).unwrap_or_default(),
                examples: def
                    .map(|l| {
                        l.examples
                            .iter()
                            .take(examples.clamp(1, 5))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        };
        Question {
            item: x.to_string(),
            options: [option(&d.options[0]), option(&d.options[1])],
        }
    }

    fn apply(
        &self,
        y: &mut u32,
        d: &Dispute<()>,
        choice: Choice,
        spec: &LabelSpec,
    ) -> Result<(), Stale> {
        let found = spec
            .labels
            .get(*y as usize)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        if found != d.options[0] {
            return Err(Stale {
                expected: d.options[0].clone(),
                found,
            });
        }
        if choice == Choice::Take {
            *y = spec.index(&d.options[1]).ok_or_else(|| Stale {
                expected: d.options[1].clone(),
                found: "a label outside the label set".into(),
            })?;
        }
        Ok(())
    }

    fn score(&self, ys: &[u32], ps: &[&[f32]], spec: &LabelSpec) -> SplitScores {
        let predicted: Vec<u32> = ps.iter().map(|p| Self::argmax(p)).collect();
        score(&spec.names(), ys, &predicted)
    }
}

/// Scores of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitScores {
    pub rows: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// label -> {precision, recall, f1, support}
    pub per_class: BTreeMap<String, ClassScores>,
    /// confusion[given][predicted], in label order.
    pub confusion: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// Scores `predicted` against `label` over `names.len()` classes.
pub fn score(names: &[&str], label: &[u32], predicted: &[u32]) -> SplitScores {
    let c = names.len();
    let mut confusion = vec![vec![0u64; c]; c];
    for (&y, &p) in label.iter().zip(predicted) {
        confusion[y as usize][p as usize] += 1;
    }
    let n = label.len();
    let correct: u64 = (0..c).map(|k| confusion[k][k]).sum();
    let mut per_class = BTreeMap::new();
    let mut f1_sum = 0.0;
    let mut present = 0usize;
    for k in 0..c {
        let tp = confusion[k][k] as f64;
        let support: u64 = confusion[k].iter().sum();
        let predicted_k: u64 = (0..c).map(|j| confusion[j][k]).sum();
        let precision = if predicted_k == 0 {
            0.0
        } else {
            tp / predicted_k as f64
        };
        let recall = if support == 0 {
            0.0
        } else {
            tp / support as f64
        };
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        // Macro-F1 over the classes that occur (in the labels or the predictions), as sklearn
        // does with labels=None.
        if support > 0 || predicted_k > 0 {
            f1_sum += f1;
            present += 1;
        }
        per_class.insert(
            names[k].to_string(),
            ClassScores {
                precision,
                recall,
                f1,
                support,
            },
        );
    }
    SplitScores {
        rows: n,
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        macro_f1: if present == 0 {
            0.0
        } else {
            f1_sum / present as f64
        },
        per_class,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LabelSpec {
        LabelSpec::from_names(["billing", "shipping", "refund"].map(String::from))
    }

    #[test]
    fn a_row_is_disputed_between_its_class_and_the_best_other() {
        let t = Classification;
        let d = t.disputes("where is it", &0, &[0.2, 0.7, 0.1], &spec());
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].options,
            ["billing".to_string(), "shipping".to_string()]
        );
        assert!((d[0].score - 0.8).abs() < 1e-6);
        assert!(t.disputes("x", &1, &[0.2, 0.7, 0.1], &spec()).is_empty());
        let q = t.question("where is it", &d[0], &spec(), 3);
        assert_eq!(q.options[1].title, "shipping");
    }

    #[test]
    fn applying_takes_the_proposal_and_refuses_a_stale_label() {
        let t = Classification;
        let d = &t.disputes("x", &0, &[0.2, 0.7, 0.1], &spec())[0];
        let mut y = 0;
        t.apply(&mut y, d, Choice::Keep, &spec()).unwrap();
        assert_eq!(y, 0);
        t.apply(&mut y, d, Choice::Take, &spec()).unwrap();
        assert_eq!(y, 1);
        let e = t.apply(&mut y, d, Choice::Take, &spec()).unwrap_err();
        assert_eq!(e.found, "shipping");
    }

    #[test]
    fn scores_follow_the_argmax() {
        let p: Vec<&[f32]> = vec![&[0.9, 0.1, 0.0], &[0.1, 0.8, 0.1], &[0.6, 0.3, 0.1]];
        let s = Classification.score(&[0, 1, 2], &p, &spec());
        assert!((s.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.confusion[2][0], 1);
    }
}
