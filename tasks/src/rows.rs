//! The dataset's task over its stored rows and flags: a row's disputes, a flag's question, and
//! applying a judge's choice, dispatched on the dataset's task in one place so that the filter,
//! the judges and `apply_labels` are written once for every task.

use crate::classification::Classification;
use crate::ctr::Ctr;
use crate::data::{Dataset, LabelSpec, Split};
use crate::detection::{BoxSite, Detection, ImageRef};
use crate::flags::Flag;
use crate::generation::Generation;
use crate::predictions::SplitPredictions;
use crate::tagging::{Span, SpanScore, Tagging};
use crate::task::{Choice, Dispute, Question, Task, TaskKind};

/// One dispute of a stored row, its site serialised (null for classification).
#[derive(Debug, Clone)]
pub struct RowDispute {
    pub row: usize,
    /// The class the per-class caps count it under (tagging: the entity type of the current
    /// reading, else of the proposed one).
    pub class: usize,
    pub dispute: Dispute<serde_json::Value>,
    /// The model's probability of each reading (tagging: the lowest over the span's tokens of
    /// the current reading, the mean of the proposed one).
    pub probs: [f32; 2],
}

/// Every dispute of a tagging split's rows, scored by `score`.
pub fn tagging_disputes(
    split: &Split,
    p: &SplitPredictions,
    spec: &LabelSpec,
    score: SpanScore,
) -> Vec<RowDispute> {
    let t = Tagging { score };
    let ntags = p.classes;
    let starts = p.token_starts();
    let mut out = Vec::new();
    for row in 0..split.len().min(p.lens.len()) {
        let probs = &p.probs[starts[row] * ntags..starts[row + 1] * ntags];
        for d in t.disputes(&split.tokens[row], &split.tags[row], probs, spec) {
            let s = &d.site;
            let tok = |i: usize, tag: u32| probs[(s.start + i) * ntags + tag as usize];
            let own = s.readings[0]
                .iter()
                .enumerate()
                .map(|(i, &k)| tok(i, k))
                .fold(1.0f32, f32::min);
            let other = s.readings[1]
                .iter()
                .enumerate()
                .map(|(i, &k)| tok(i, k))
                .sum::<f32>()
                / s.readings[1].len().max(1) as f32;
            let kind = |r: &[u32]| r.iter().find_map(|&k| crate::tagging::type_of(k));
            let class = kind(&s.readings[0]).or(kind(&s.readings[1])).unwrap_or(0) as usize;
            out.push(RowDispute {
                row,
                class,
                probs: [own, other],
                dispute: Dispute {
                    site: serde_json::to_value(s).expect("a span serialises"),
                    options: d.options,
                    score: d.score,
                },
            });
        }
    }
    out
}

/// Every box disagreement of a detection split's rows (`task` holds the thresholds).
pub fn detection_disputes(
    split: &Split,
    p: &SplitPredictions,
    spec: &LabelSpec,
    task: &Detection,
) -> Vec<RowDispute> {
    let mut out = Vec::new();
    for row in 0..split.len().min(p.detections.len()) {
        let pred = &p.detections[row];
        for d in task.disputes(&image(split, row), &split.boxes[row], pred, spec) {
            let s = &d.site;
            let class = s.annotated.or(s.proposed).map(|b| b.class).unwrap_or(0) as usize;
            // The model's support of the annotated box, and its confidence in the proposed one.
            let own = s
                .annotated
                .map(|a| Detection::support_of(&a, pred) as f32)
                .unwrap_or(f32::NAN);
            let other = s
                .proposed
                .and_then(|b| {
                    pred.iter()
                        .filter(|q| q.bbox.class == b.class)
                        .map(|q| (crate::detection::iou(&q.bbox, &b), q.score))
                        .max_by(|x, y| x.0.total_cmp(&y.0))
                        .map(|(_, sc)| sc)
                })
                .unwrap_or(f32::NAN);
            out.push(RowDispute {
                row,
                class,
                probs: [own, other],
                dispute: Dispute {
                    site: serde_json::to_value(s).expect("a box site serialises"),
                    options: d.options,
                    score: d.score,
                },
            });
        }
    }
    out
}

/// Row `row` of a detection split as the task's input.
pub fn image(split: &Split, row: usize) -> ImageRef {
    let [width, height] = split.sizes.get(row).copied().unwrap_or([0, 0]);
    ImageRef {
        path: split.texts[row].clone(),
        width,
        height,
    }
}

fn box_site(flag: &Flag) -> Result<BoxSite, String> {
    serde_json::from_value(flag.site.clone()).map_err(|e| {
        format!(
            "row {}: the flag's `site` is not a detection box site ({e}); was it made for another task?",
            flag.id
        )
    })
}

fn span(flag: &Flag) -> Result<Span, String> {
    serde_json::from_value(flag.site.clone()).map_err(|e| {
        format!(
            "row {}: the flag's `site` is not a tagging span ({e}); was it made for another task?",
            flag.id
        )
    })
}

fn tokens<'a>(ds: &'a Dataset, flag: &Flag) -> Result<&'a [String], String> {
    let s = ds
        .split(&flag.split)
        .ok_or_else(|| format!("the dataset has no split \"{}\"", flag.split))?;
    let row = row_of(s, flag)?;
    Ok(&s.tokens[row])
}

/// The row of `flag` in `split`: by id (its row number a hint).
pub fn row_of(split: &Split, flag: &Flag) -> Result<usize, String> {
    if split.ids.get(flag.row) == Some(&flag.id) {
        return Ok(flag.row);
    }
    split
        .ids
        .iter()
        .position(|i| *i == flag.id)
        .ok_or_else(|| format!("row id \"{}\" is not in split {}", flag.id, flag.split))
}

/// The binary question of a flag, as its task shows it.
pub fn question(ds: &Dataset, flag: &Flag, examples: usize) -> Result<Question, String> {
    question_with(ds, flag, examples, &CtrHistory::new(ds))
}

/// [`question`] with the CTR history index built once by the caller.
pub fn question_with(
    ds: &Dataset,
    flag: &Flag,
    examples: usize,
    history: &CtrHistory,
) -> Result<Question, String> {
    let options = [flag.label.clone(), flag.candidate.clone()];
    match ds.task {
        TaskKind::Classification => Ok(Classification.question(
            &flag.text,
            &Dispute {
                site: (),
                options,
                score: flag.score,
            },
            &ds.labels,
            examples,
        )),
        TaskKind::Ctr => Ok(Ctr {
            history: history.of(ds, flag, 5),
            fields: ds.ctr.clone(),
        }
        .question(
            &flag.text,
            &Dispute {
                site: (),
                options,
                score: flag.score,
            },
            &ds.labels,
            examples,
        )),
        TaskKind::Generation => Ok(generation_for(ds, flag, examples).question(
            &flag.text,
            &Dispute {
                site: (),
                options,
                score: flag.score,
            },
            &ds.labels,
            examples,
        )),
        TaskKind::Detection => {
            let split = ds
                .split(&flag.split)
                .ok_or_else(|| format!("the dataset has no split \"{}\"", flag.split))?;
            let row = row_of(split, flag)?;
            Ok(Detection::default().question(
                &image(split, row),
                &Dispute {
                    site: box_site(flag)?,
                    options,
                    score: flag.score,
                },
                &ds.labels,
                examples,
            ))
        }
        TaskKind::Tagging => Ok(Tagging::default().question(
            tokens(ds, flag)?,
            &Dispute {
                site: span(flag)?,
                options,
                score: flag.score,
            },
            &ds.labels,
            examples,
        )),
    }
}

/// Generation: the task with `examples` source -> target pairs of other train rows, spread
/// over the split from a place the flag's id picks (cheap per flag, different across flags).
fn generation_for(ds: &Dataset, flag: &Flag, examples: usize) -> Generation {
    let mut g = Generation::default();
    let Some(train) = ds.split("train").filter(|t| !t.targets.is_empty()) else {
        return g;
    };
    let n = train.len();
    let want = examples.clamp(1, 5).min(n.saturating_sub(1));
    let h = blake3::hash(flag.id.as_bytes());
    let start = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) as usize % n;
    let step = (n / (want + 1)).max(1);
    let mut i = start;
    for _ in 0..n {
        if g.examples.len() >= want {
            break;
        }
        if train.ids[i] != flag.id {
            g.examples
                .push((train.texts[i].clone(), train.targets[i].clone()));
        }
        i = (i + step) % n;
    }
    g
}

/// Applies a judge's choice on `flag` to row `row` of its split; an error when the row no
/// longer holds what was disputed (the message says what it holds now).
pub fn apply(ds: &mut Dataset, flag: &Flag, row: usize, choice: Choice) -> Result<(), String> {
    let options = [flag.label.clone(), flag.candidate.clone()];
    let spec = ds.labels.clone();
    let task = ds.task;
    let split = ds
        .splits
        .get_mut(&flag.split)
        .ok_or_else(|| format!("the dataset has no split \"{}\"", flag.split))?;
    match task {
        TaskKind::Classification | TaskKind::Ctr => Classification
            .apply(
                &mut split.labels[row],
                &Dispute {
                    site: (),
                    options,
                    score: 0.0,
                },
                choice,
                &spec,
            )
            .map_err(|e| e.to_string()),
        TaskKind::Generation => Generation::default()
            .apply(
                &mut split.targets[row],
                &Dispute {
                    site: (),
                    options,
                    score: 0.0,
                },
                choice,
                &spec,
            )
            .map_err(|e| e.to_string()),
        TaskKind::Detection => Detection::default()
            .apply(
                &mut split.boxes[row],
                &Dispute {
                    site: box_site(flag)?,
                    options,
                    score: 0.0,
                },
                choice,
                &spec,
            )
            .map_err(|e| e.to_string()),
        TaskKind::Tagging => Tagging::default()
            .apply(
                &mut split.tags[row],
                &Dispute {
                    site: span(flag)?,
                    options,
                    score: 0.0,
                },
                choice,
                &spec,
            )
            .map_err(|e| e.to_string()),
    }
}

/// Whether the flag's options are labels of the spec (classification) or free titles of
/// readings (tagging's spans, generation's texts): a chosen option must be one of the flag's
/// two either way.
pub fn options_are_labels(task: TaskKind) -> bool {
    matches!(task, TaskKind::Classification | TaskKind::Ctr)
}

/// CTR: each user's clicks in the train split (row id, item key, item description), gathered
/// once so that every question can show the user's other clicks.
#[derive(Debug, Clone, Default)]
pub struct CtrHistory {
    by_user: std::collections::HashMap<String, Vec<(String, String, String)>>,
}

impl CtrHistory {
    /// The index of `ds` (empty for other tasks).
    pub fn new(ds: &Dataset) -> CtrHistory {
        let mut by_user: std::collections::HashMap<String, Vec<_>> = Default::default();
        if let (Some(f), Some(train)) = (&ds.ctr, ds.split("train")) {
            for ((t, &y), id) in train.texts.iter().zip(&train.labels).zip(&train.ids) {
                let Some(user) = f.user_key(t).filter(|_| y == crate::ctr::CLICK) else {
                    continue;
                };
                let item = f.item_part(t);
                let key = item.first().map(|(_, v)| v.to_string()).unwrap_or_default();
                by_user.entry(user.to_string()).or_default().push((
                    id.clone(),
                    key,
                    crate::ctr::describe(&item),
                ));
            }
        }
        CtrHistory { by_user }
    }

    /// Up to `most` other items the flag's user clicked in train (not the flagged row or item),
    /// in the split's order.
    pub fn of(&self, ds: &Dataset, flag: &Flag, most: usize) -> Vec<String> {
        let Some(f) = &ds.ctr else { return Vec::new() };
        let Some(user) = f.user_key(&flag.text) else {
            return Vec::new();
        };
        let this_item = f.item_part(&flag.text).first().map(|(_, v)| v.to_string());
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter(|(id, key, _)| *id != flag.id && Some(key) != this_item.as_ref())
            .take(most)
            .map(|(_, _, d)| d.clone())
            .collect()
    }
}

/// Whether row `row` still holds what `flag` disputes; the error says what it holds now.
pub fn holds(ds: &Dataset, flag: &Flag, row: usize) -> Result<(), String> {
    let split = ds
        .split(&flag.split)
        .ok_or_else(|| format!("the dataset has no split \"{}\"", flag.split))?;
    let options = [flag.label.clone(), flag.candidate.clone()];
    match ds.task {
        TaskKind::Classification | TaskKind::Ctr => {
            let mut y = split.labels[row];
            let d = Dispute {
                site: (),
                options,
                score: 0.0,
            };
            Classification.apply(&mut y, &d, Choice::Keep, &ds.labels)
        }
        TaskKind::Generation => {
            let mut y = split.targets[row].clone();
            let d = Dispute {
                site: (),
                options,
                score: 0.0,
            };
            Generation::default().apply(&mut y, &d, Choice::Keep, &ds.labels)
        }
        TaskKind::Detection => {
            let mut y = split.boxes[row].clone();
            let d = Dispute {
                site: box_site(flag)?,
                options,
                score: 0.0,
            };
            Detection::default().apply(&mut y, &d, Choice::Keep, &ds.labels)
        }
        TaskKind::Tagging => {
            let mut y = split.tags[row].clone();
            let d = Dispute {
                site: span(flag)?,
                options,
                score: 0.0,
            };
            Tagging::default().apply(&mut y, &d, Choice::Keep, &ds.labels)
        }
    }
    .map_err(|e| e.to_string())
}
