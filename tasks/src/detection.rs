//! Object detection: an image and its boxes. A dispute is one box disagreement between the
//! annotated boxes and the model's scored boxes (a swapped class, a badly located box, an
//! overlooked object, a spurious box), judged as "the annotated box (or none)" against "the
//! predicted box (or none)"; splits are scored by COCO's mAP rules.

use serde::{Deserialize, Serialize};

use crate::data::LabelSpec;
use crate::task::{Choice, Dispute, Question, QuestionOption, Stale, Task};

/// One box: its class (the spec's index) and corners in pixels, `xmin < xmax`, `ymin < ymax`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub class: u32,
    pub xmin: f32,
    pub ymin: f32,
    pub xmax: f32,
    pub ymax: f32,
}

impl BBox {
    pub fn width(&self) -> f64 {
        self.xmax as f64 - self.xmin as f64
    }

    pub fn height(&self) -> f64 {
        self.ymax as f64 - self.ymin as f64
    }

    pub fn area(&self) -> f64 {
        self.width() * self.height()
    }

    /// The same place within a twentieth of a pixel, and the same class.
    pub fn same(&self, o: &BBox) -> bool {
        self.class == o.class
            && (self.xmin - o.xmin).abs() < 0.05
            && (self.ymin - o.ymin).abs() < 0.05
            && (self.xmax - o.xmax).abs() < 0.05
            && (self.ymax - o.ymax).abs() < 0.05
    }
}

/// Why a box cannot be in an image of `width` x `height` pixels, if it cannot: its corners
/// must be finite, inside the image (a half-pixel of slack), with a positive area.
pub fn check_box(b: &BBox, width: f64, height: f64) -> Result<(), String> {
    let c = [b.xmin, b.ymin, b.xmax, b.ymax];
    if c.iter().any(|v| !v.is_finite()) {
        return Err(format!("the box {c:?} has a corner that is not a number"));
    }
    if b.xmax <= b.xmin || b.ymax <= b.ymin {
        return Err(format!(
            "the box [{}, {}, {}, {}] has no area (xmax must exceed xmin, ymax ymin)",
            b.xmin, b.ymin, b.xmax, b.ymax
        ));
    }
    let slack = 0.5;
    if (b.xmin as f64) < -slack
        || (b.ymin as f64) < -slack
        || b.xmax as f64 > width + slack
        || b.ymax as f64 > height + slack
    {
        return Err(format!(
            "the box [{}, {}, {}, {}] is outside the {width}x{height} image",
            b.xmin, b.ymin, b.xmax, b.ymax
        ));
    }
    Ok(())
}

/// Intersection over union of two boxes, as COCO computes it (no +1 on pixel sizes, f64).
pub fn iou(a: &BBox, b: &BBox) -> f64 {
    let w = (a.xmax as f64).min(b.xmax as f64) - (a.xmin as f64).max(b.xmin as f64);
    let h = (a.ymax as f64).min(b.ymax as f64) - (a.ymin as f64).max(b.ymin as f64);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    inter / (a.area() + b.area() - inter)
}

/// A predicted box and the model's confidence in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoredBox {
    #[serde(flatten)]
    pub bbox: BBox,
    pub score: f32,
}

/// The image a row is about: where it is (relative to the dataset's folder, or absolute) and
/// its size in pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    pub path: String,
    pub width: u32,
    pub height: u32,
}

/// What is wrong with a box, as a dispute reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxIssue {
    /// The box is in the right place but the model reads another class.
    Swap,
    /// The model puts the object somewhere else (IoU below the good-match threshold).
    Location,
    /// The model sees a confident object no annotated box covers.
    Overlooked,
    /// An annotated box the model does not support.
    Spurious,
}

impl BoxIssue {
    pub fn name(self) -> &'static str {
        match self {
            BoxIssue::Swap => "swap",
            BoxIssue::Location => "location",
            BoxIssue::Overlooked => "overlooked",
            BoxIssue::Spurious => "spurious",
        }
    }

    pub const ALL: [BoxIssue; 4] = [
        BoxIssue::Swap,
        BoxIssue::Location,
        BoxIssue::Overlooked,
        BoxIssue::Spurious,
    ];
}

/// Where a dispute is: the annotated box (none when overlooked) and the proposed one (none when
/// spurious). Flags carry it as their `site`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoxSite {
    pub issue: BoxIssue,
    pub annotated: Option<BBox>,
    pub proposed: Option<BBox>,
}

/// The task and its matching thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Predictions below this score are ignored except as support for annotated boxes.
    pub min_score: f32,
    /// An unmatched prediction at least this confident is an overlooked object.
    pub overlooked_score: f32,
    /// Pairs of boxes overlapping at least this much are matched (then compared).
    pub match_iou: f64,
    /// A matched pair overlapping less than this is badly located.
    pub good_iou: f64,
    /// An annotated box whose best support (IoU x score of a same-class prediction) is below
    /// this is spurious.
    pub support: f64,
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            min_score: 0.05,
            overlooked_score: 0.5,
            match_iou: 0.1,
            good_iou: 0.5,
            support: 0.3,
        }
    }
}

/// A box as an option title: `class at [xmin, ymin, xmax, ymax]` (one decimal), or `no box`.
pub fn title(b: Option<&BBox>, spec: &LabelSpec) -> String {
    match b {
        None => NO_BOX.to_string(),
        Some(b) => format!(
            "{} at [{:.1}, {:.1}, {:.1}, {:.1}]",
            class_name(b.class, spec),
            b.xmin,
            b.ymin,
            b.xmax,
            b.ymax
        ),
    }
}

/// The title of the "no box here" option.
pub const NO_BOX: &str = "no box";

fn class_name(k: u32, spec: &LabelSpec) -> String {
    spec.labels
        .get(k as usize)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("class {k}"))
}

impl Detection {
    /// Matches annotated and predicted boxes one to one, greedily by IoU x score (highest
    /// first, ties by order), pairs overlapping less than `match_iou` left unmatched. Returns, per annotated box, the index
    /// of its prediction.
    pub fn matches(&self, given: &[BBox], pred: &[ScoredBox]) -> Vec<Option<usize>> {
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (i, a) in given.iter().enumerate() {
            for (j, p) in pred.iter().enumerate() {
                if p.score < self.min_score {
                    continue;
                }
                let o = iou(a, &p.bbox);
                if o >= self.match_iou {
                    // The model's most confident reading of the place wins, not a faint
                    // box that happens to overlap a little more.
                    pairs.push((o * p.score as f64, i, j));
                }
            }
        }
        pairs.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let mut of_given = vec![None; given.len()];
        let mut used = vec![false; pred.len()];
        for (_, i, j) in pairs {
            if of_given[i].is_none() && !used[j] {
                of_given[i] = Some(j);
                used[j] = true;
            }
        }
        of_given
    }

    /// How well the predictions support an annotated box: the best IoU x score among
    /// predictions of its class (every prediction counts, however unconfident).
    pub fn support_of(a: &BBox, pred: &[ScoredBox]) -> f64 {
        pred.iter()
            .filter(|p| p.bbox.class == a.class)
            .map(|p| iou(a, &p.bbox) * p.score as f64)
            .fold(0.0, f64::max)
    }

    /// Every box disagreement of one image, as sites with scores (higher: more suspicious).
    pub fn sites(&self, given: &[BBox], pred: &[ScoredBox]) -> Vec<(BoxSite, f64)> {
        let m = self.matches(given, pred);
        let mut out = Vec::new();
        let mut used = vec![false; pred.len()];
        for (i, a) in given.iter().enumerate() {
            let support = Self::support_of(a, pred);
            match m[i] {
                Some(j) => {
                    used[j] = true;
                    let p = pred[j];
                    let o = iou(a, &p.bbox);
                    if p.bbox.class != a.class && o >= self.good_iou {
                        out.push((
                            BoxSite {
                                issue: BoxIssue::Swap,
                                annotated: Some(*a),
                                proposed: Some(BBox {
                                    class: p.bbox.class,
                                    ..*a
                                }),
                            },
                            p.score as f64 * (1.0 - support),
                        ));
                    } else if o < self.good_iou {
                        // The model's box elsewhere (with its class, when that differs too).
                        out.push((
                            BoxSite {
                                issue: BoxIssue::Location,
                                annotated: Some(*a),
                                proposed: Some(p.bbox),
                            },
                            p.score as f64 * (1.0 - o),
                        ));
                    }
                }
                None if support < self.support => out.push((
                    BoxSite {
                        issue: BoxIssue::Spurious,
                        annotated: Some(*a),
                        proposed: None,
                    },
                    1.0 - support,
                )),
                None => {}
            }
        }
        let mut raised: Vec<BBox> = Vec::new();
        for (j, p) in pred.iter().enumerate() {
            if used[j] || p.score < self.overlooked_score {
                continue;
            }
            // One question per place: a less confident prediction of another class at the
            // same place (predictions come most confident first) is the same object.
            if raised.iter().any(|r| iou(r, &p.bbox) >= self.good_iou)
                || pred[..j].iter().zip(&used).any(|(q, &u)| {
                    u && q.score >= p.score && iou(&q.bbox, &p.bbox) >= self.good_iou
                })
            {
                continue;
            }
            // A prediction that overlaps a same-class annotated box well is a duplicate, not
            // an object nobody boxed.
            let covered = given
                .iter()
                .any(|a| a.class == p.bbox.class && iou(a, &p.bbox) >= self.good_iou);
            if !covered {
                raised.push(p.bbox);
                out.push((
                    BoxSite {
                        issue: BoxIssue::Overlooked,
                        annotated: None,
                        proposed: Some(p.bbox),
                    },
                    p.score as f64,
                ));
            }
        }
        out
    }
}

/// A question's option text for a box (or none): its class's definition.
fn option(b: Option<&BBox>, spec: &LabelSpec, examples: usize) -> QuestionOption {
    match b {
        None => QuestionOption {
            title: NO_BOX.to_string(),
            definition: "There is no object of any of the task's classes at this place."
                .to_string(),
            examples: Vec::new(),
        },
        Some(b) => {
            let def = spec.labels.get(b.class as usize);
            QuestionOption {
                title: title(Some(b), spec),
                definition: def.map(|d| d.definition.clone()).unwrap_or_default(),
                examples: def
                    .map(|d| d.examples.iter().take(examples.min(5)).cloned().collect())
                    .unwrap_or_default(),
            }
        }
    }
}

impl Task for Detection {
    const KIND: &'static str = "detection";
    type Input = ImageRef;
    type Label = Vec<BBox>;
    type Prediction = [ScoredBox];
    type Site = BoxSite;
    type Scores = DetScores;

    fn disputes(
        &self,
        _x: &ImageRef,
        y: &Vec<BBox>,
        p: &[ScoredBox],
        spec: &LabelSpec,
    ) -> Vec<Dispute<BoxSite>> {
        self.sites(y, p)
            .into_iter()
            .map(|(site, score)| Dispute {
                options: [
                    title(site.annotated.as_ref(), spec),
                    title(site.proposed.as_ref(), spec),
                ],
                site,
                score,
            })
            .collect()
    }

    fn question(
        &self,
        x: &ImageRef,
        d: &Dispute<BoxSite>,
        spec: &LabelSpec,
        examples: usize,
    ) -> Question {
        let what = match d.site.issue {
            BoxIssue::Swap => "the box's class",
            BoxIssue::Location => "where the box is",
            BoxIssue::Overlooked => "whether an unboxed object is here",
            BoxIssue::Spurious => "whether the boxed object is there",
        };
        Question {
            item: format!(
                "Image {} ({}x{} pixels). The question is {what}: pick the reading that matches the image.",
                x.path, x.width, x.height
            ),
            options: [
                option(d.site.annotated.as_ref(), spec, examples),
                option(d.site.proposed.as_ref(), spec, examples),
            ],
        }
    }

    fn apply(
        &self,
        y: &mut Vec<BBox>,
        d: &Dispute<BoxSite>,
        choice: Choice,
        spec: &LabelSpec,
    ) -> Result<(), Stale> {
        let stale = |y: &Vec<BBox>| Stale {
            expected: d.options[0].clone(),
            found: y
                .iter()
                .map(|b| title(Some(b), spec))
                .collect::<Vec<_>>()
                .join("; "),
        };
        let at = match d.site.annotated {
            Some(a) => match y.iter().position(|b| b.same(&a)) {
                Some(i) => Some(i),
                None => return Err(stale(y)),
            },
            None => {
                // "No box" still holds unless someone boxed it since.
                if let Some(p) = d.site.proposed {
                    if y.iter().any(|b| b.same(&p)) {
                        return Err(stale(y));
                    }
                }
                None
            }
        };
        if choice == Choice::Keep {
            return Ok(());
        }
        match (at, d.site.proposed) {
            (Some(i), Some(p)) => y[i] = p,
            (Some(i), None) => {
                y.remove(i);
            }
            (None, Some(p)) => y.push(p),
            (None, None) => {}
        }
        Ok(())
    }

    fn score(&self, ys: &[Vec<BBox>], ps: &[&[ScoredBox]], spec: &LabelSpec) -> DetScores {
        let owned: Vec<Vec<ScoredBox>> = ps.iter().map(|p| p.to_vec()).collect();
        coco_map(ys, &owned, spec.labels.len())
    }
}

/// COCO-style scores of one split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetScores {
    /// mAP averaged over IoU thresholds 0.50:0.05:0.95 (COCO's AP).
    pub map: f64,
    /// mAP at IoU 0.5 (VOC-style AP50).
    pub map50: f64,
    pub map75: f64,
    /// Per class (the spec's order): AP over 0.50:0.95 and AP50; NaN where the class has no
    /// annotated box.
    pub per_class: Vec<f64>,
    pub per_class50: Vec<f64>,
    /// Annotated and predicted boxes counted.
    pub annotated: usize,
    pub predicted: usize,
}

/// COCO's ten IoU thresholds, 0.50 to 0.95, as numpy's linspace makes them.
fn iou_thresholds() -> [f64; 10] {
    let mut t = [0.0; 10];
    for (i, x) in t.iter_mut().enumerate() {
        *x = 0.5 + (0.95 - 0.5) * i as f64 / 9.0;
    }
    t
}

/// mAP by pycocotools' rules (bbox, area "all", at most 100 detections per image and class,
/// 101 recall points, precision made monotone, classes without annotated boxes left out).
/// Images are taken in the given order for ties between equal scores.
pub fn coco_map(gts: &[Vec<BBox>], dets: &[Vec<ScoredBox>], classes: usize) -> DetScores {
    let thr = iou_thresholds();
    let recall_points: Vec<f64> = (0..=100).map(|i| i as f64 / 100.0).collect();
    // precision[t][k][r], -1 where a class has no annotated box.
    let mut precision = vec![vec![vec![-1.0f64; 101]; classes]; thr.len()];
    #[allow(clippy::needless_range_loop)] // k indexes the second axis, not the first
    for k in 0..classes {
        let k32 = k as u32;
        let mut npos = 0usize;
        // Per threshold: (score, matched) of every detection, image by image.
        let mut scored: Vec<Vec<(f32, bool)>> = vec![Vec::new(); thr.len()];
        for (img, g) in gts.iter().enumerate() {
            let g: Vec<&BBox> = g.iter().filter(|b| b.class == k32).collect();
            npos += g.len();
            let mut d: Vec<&ScoredBox> = dets
                .get(img)
                .map(|d| d.iter().filter(|x| x.bbox.class == k32).collect())
                .unwrap_or_default();
            // Stable sort by score, highest first, then the first 100.
            d.sort_by(|a, b| b.score.total_cmp(&a.score));
            d.truncate(100);
            let ious: Vec<Vec<f64>> = d
                .iter()
                .map(|x| g.iter().map(|y| iou(&x.bbox, y)).collect())
                .collect();
            for (ti, &t) in thr.iter().enumerate() {
                let mut taken = vec![false; g.len()];
                for (di, x) in d.iter().enumerate() {
                    let mut best = t.min(1.0 - 1e-10);
                    let mut m = None;
                    for gi in 0..g.len() {
                        if taken[gi] || ious[di][gi] < best {
                            continue;
                        }
                        best = ious[di][gi];
                        m = Some(gi);
                    }
                    if let Some(gi) = m {
                        taken[gi] = true;
                    }
                    scored[ti].push((x.score, m.is_some()));
                }
            }
        }
        if npos == 0 {
            continue;
        }
        for (ti, s) in scored.iter_mut().enumerate() {
            // pycocotools concatenates images' detections and sorts them stably by score.
            s.sort_by(|a, b| b.0.total_cmp(&a.0));
            let (mut tp, mut fp) = (0usize, 0usize);
            let mut rc = Vec::with_capacity(s.len());
            let mut pr = Vec::with_capacity(s.len());
            for &(_, hit) in s.iter() {
                if hit {
                    tp += 1;
                } else {
                    fp += 1;
                }
                rc.push(tp as f64 / npos as f64);
                pr.push(tp as f64 / (tp as f64 + fp as f64 + f64::EPSILON));
            }
            for i in (1..pr.len()).rev() {
                if pr[i] > pr[i - 1] {
                    pr[i - 1] = pr[i];
                }
            }
            let q = &mut precision[ti][k];
            for (ri, &r) in recall_points.iter().enumerate() {
                // The first detection whose recall reaches r (numpy's searchsorted, left).
                let at = rc.partition_point(|&x| x < r);
                q[ri] = if at < pr.len() { pr[at] } else { 0.0 };
            }
        }
    }
    let mean = |cells: &mut dyn Iterator<Item = f64>| {
        let (mut s, mut n) = (0.0, 0usize);
        for c in cells.filter(|&c| c > -1.0) {
            s += c;
            n += 1;
        }
        if n == 0 {
            -1.0
        } else {
            s / n as f64
        }
    };
    let per = |k: usize, ts: &[usize]| {
        let v = mean(&mut ts.iter().flat_map(|&t| precision[t][k].iter().copied()));
        if v == -1.0 {
            f64::NAN
        } else {
            v
        }
    };
    let all: Vec<usize> = (0..thr.len()).collect();
    let over = |ts: &[usize]| {
        mean(
            &mut ts
                .iter()
                .flat_map(|&t| precision[t].iter().flat_map(|q| q.iter().copied())),
        )
    };
    DetScores {
        map: over(&all),
        map50: over(&[0]),
        map75: over(&[5]),
        per_class: (0..classes).map(|k| per(k, &all)).collect(),
        per_class50: (0..classes).map(|k| per(k, &[0])).collect(),
        annotated: gts.iter().map(Vec::len).sum(),
        predicted: dets.iter().map(Vec::len).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(class: u32, xmin: f32, ymin: f32, xmax: f32, ymax: f32) -> BBox {
        BBox {
            class,
            xmin,
            ymin,
            xmax,
            ymax,
        }
    }

    fn d(bbox: BBox, score: f32) -> ScoredBox {
        ScoredBox { bbox, score }
    }

    fn spec() -> LabelSpec {
        LabelSpec::from_names(["cat".to_string(), "dog".to_string()])
    }

    #[test]
    fn iou_of_overlapping_disjoint_and_equal_boxes() {
        let a = b(0, 0.0, 0.0, 10.0, 10.0);
        assert_eq!(iou(&a, &a), 1.0);
        assert!((iou(&a, &b(0, 5.0, 0.0, 15.0, 10.0)) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(iou(&a, &b(0, 10.0, 0.0, 20.0, 10.0)), 0.0);
    }

    #[test]
    fn each_kind_of_disagreement_is_one_dispute() {
        let t = Detection::default();
        let given = vec![
            b(0, 0.0, 0.0, 10.0, 10.0),   // the model calls it a dog: swap
            b(1, 20.0, 20.0, 30.0, 30.0), // the model's box is shifted: location
            b(0, 50.0, 50.0, 60.0, 60.0), // nothing there: spurious
            b(1, 70.0, 70.0, 80.0, 80.0), // agreed
        ];
        let pred = vec![
            d(b(1, 0.0, 0.0, 10.0, 10.0), 0.9),
            d(b(1, 25.0, 25.0, 35.0, 35.0), 0.8),
            d(b(1, 70.0, 70.0, 80.0, 80.0), 0.95),
            d(b(0, 90.0, 0.0, 99.0, 9.0), 0.7),   // overlooked
            d(b(0, 90.0, 50.0, 99.0, 59.0), 0.2), // too unsure to raise
        ];
        let ds = t.disputes(
            &ImageRef {
                path: "a.png".into(),
                width: 100,
                height: 100,
            },
            &given,
            &pred,
            &spec(),
        );
        let issues: Vec<BoxIssue> = ds.iter().map(|d| d.site.issue).collect();
        assert_eq!(
            issues,
            [
                BoxIssue::Swap,
                BoxIssue::Location,
                BoxIssue::Spurious,
                BoxIssue::Overlooked
            ]
        );
        assert_eq!(ds[0].options[0], "cat at [0.0, 0.0, 10.0, 10.0]");
        assert_eq!(ds[0].options[1], "dog at [0.0, 0.0, 10.0, 10.0]");
        assert_eq!(ds[2].options[1], NO_BOX);
        assert_eq!(ds[3].options[0], NO_BOX);
        assert!(ds.iter().all(|d| d.score > 0.0 && d.score <= 1.0));
    }

    #[test]
    fn taking_a_reading_replaces_removes_or_adds_the_box_and_stale_answers_are_refused() {
        let t = Detection::default();
        let s = spec();
        let x = ImageRef {
            path: "a.png".into(),
            width: 100,
            height: 100,
        };
        let given = vec![b(0, 0.0, 0.0, 10.0, 10.0), b(0, 50.0, 50.0, 60.0, 60.0)];
        let pred = vec![
            d(b(1, 0.0, 0.0, 10.0, 10.0), 0.9),
            d(b(0, 80.0, 80.0, 90.0, 90.0), 0.9),
        ];
        let ds = t.disputes(&x, &given, &pred, &s);
        assert_eq!(ds.len(), 3);
        let mut y = given.clone();
        for d in &ds {
            t.apply(&mut y, d, Choice::Take, &s).unwrap();
        }
        assert_eq!(
            y,
            vec![b(1, 0.0, 0.0, 10.0, 10.0), b(0, 80.0, 80.0, 90.0, 90.0)]
        );
        // Applied again, each answer finds the label changed.
        for d in &ds {
            assert!(t.apply(&mut y.clone(), d, Choice::Keep, &s).is_err());
        }
        let mut kept = given.clone();
        for d in &ds {
            t.apply(&mut kept, d, Choice::Keep, &s).unwrap();
        }
        assert_eq!(kept, given);
    }

    #[test]
    fn perfect_detections_score_one_and_misses_lower_recall() {
        let gts = vec![
            vec![b(0, 0.0, 0.0, 10.0, 10.0), b(1, 20.0, 20.0, 40.0, 40.0)],
            vec![b(0, 5.0, 5.0, 25.0, 25.0)],
        ];
        let perfect: Vec<Vec<ScoredBox>> = gts
            .iter()
            .map(|g| g.iter().map(|&x| d(x, 0.9)).collect())
            .collect();
        let s = coco_map(&gts, &perfect, 3);
        assert!((s.map - 1.0).abs() < 1e-12, "{s:?}");
        assert!(s.per_class[2].is_nan());
        let mut half = perfect.clone();
        half[1].clear();
        let s = coco_map(&gts, &half, 3);
        assert!(s.per_class50[0] < 0.6 && s.per_class50[0] > 0.4, "{s:?}");
        assert!((s.per_class50[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn splits_and_predictions_round_trip_and_bad_boxes_are_refused_by_row_and_box() {
        use crate::data::Split;
        use crate::predictions::SplitPredictions;
        use crate::task::TaskKind;
        let s = spec();
        let split = Split {
            ids: vec!["a".into(), "b".into()],
            texts: vec!["img/a.png".into(), "img/b.png".into()],
            sizes: vec![[64, 64], [96, 48]],
            boxes: vec![vec![b(1, 1.0, 2.0, 30.5, 40.0)], vec![]],
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.parquet");
        split.write(&path, &s, TaskKind::Detection).unwrap();
        assert_eq!(Split::read(&path, &s, TaskKind::Detection).unwrap(), split);
        let mut wrong = split.clone();
        wrong.boxes[1] = vec![b(0, 0.0, 0.0, 10.0, 10.0), b(0, 50.0, 10.0, 97.0, 20.0)];
        wrong.write(&path, &s, TaskKind::Detection).unwrap();
        let e = Split::read(&path, &s, TaskKind::Detection)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 1, box 1") && e.contains("outside the 96x48 image"),
            "{e}"
        );

        let p = SplitPredictions {
            detections: vec![vec![d(b(0, 1.0, 1.0, 9.0, 9.0), 0.75)], vec![]],
            fold: vec![0, 1],
            classes: 2,
            ..Default::default()
        };
        let pp = dir.path().join("pred.parquet");
        p.write_detections(&pp, &split.ids, &["cat", "dog"])
            .unwrap();
        assert_eq!(
            SplitPredictions::read_detections(&pp, &split, &s).unwrap(),
            p
        );
    }
}
