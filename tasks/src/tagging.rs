//! Sequence tagging (NER), the second [`Task`]: the input is a sentence's tokens, the label one
//! tag per token (stored as IOB2 over the spec's entity types), the prediction a row of tag
//! probabilities per token. A dispute is a token span where annotated and predicted entities
//! differ (type swap, boundary, missing, spurious) between the two readings of that span; scores
//! are entity precision/recall/F1 per type and micro-averaged under the conlleval rules seqeval
//! uses by default.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::classification::ClassScores;
use crate::data::LabelSpec;
use crate::task::{Choice, Dispute, Question, QuestionOption, Stale, Task};

/// The title of the reading with no entity in the span.
pub const NOT_AN_ENTITY: &str = "not an entity";

/// How tags are written in a source file (stored as IOB2 whatever it was).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// B- begins every entity, I- continues it (CoNLL-2003 as most copies ship it).
    #[default]
    Iob2,
    /// I- begins an entity unless it directly follows one of the same type (then B-).
    Iob1,
    /// B-/I-/E- for begin/inside/end, S- for a one-token entity.
    Bioes,
}

/// The tag names of a spec's entity types, by tag index: `O`, then `B-T`, `I-T` per type.
pub fn tag_names(spec: &LabelSpec) -> Vec<String> {
    let mut v = vec!["O".to_string()];
    for l in &spec.labels {
        v.push(format!("B-{}", l.name));
        v.push(format!("I-{}", l.name));
    }
    v
}

/// Tag index of `B-` of entity type `k`.
pub fn begin(k: u32) -> u32 {
    1 + 2 * k
}

/// Tag index of `I-` of entity type `k`.
pub fn inside(k: u32) -> u32 {
    2 + 2 * k
}

/// The entity type of a tag index (`None` for O).
pub fn type_of(tag: u32) -> Option<u32> {
    (tag > 0).then(|| (tag - 1) / 2)
}

fn is_begin(tag: u32) -> bool {
    tag > 0 && (tag - 1).is_multiple_of(2)
}

/// One entity: a type (index into the spec) over tokens `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entity {
    pub kind: u32,
    pub start: usize,
    pub end: usize,
}

impl Entity {
    fn overlaps(&self, o: &Entity) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// The entities of an IOB2 tag sequence under the conlleval rules (seqeval's default): an
/// entity starts at B-, or at an I- that follows O or another type, and runs while I- of its
/// type follows.
pub fn entities(tags: &[u32]) -> Vec<Entity> {
    let mut out = Vec::new();
    let mut open: Option<Entity> = None;
    for (i, &t) in tags.iter().enumerate() {
        let kind = type_of(t);
        let continues = matches!((open, kind), (Some(e), Some(k)) if e.kind == k && !is_begin(t));
        if !continues {
            if let Some(mut e) = open.take() {
                e.end = i;
                out.push(e);
            }
            open = kind.map(|k| Entity {
                kind: k,
                start: i,
                end: i + 1,
            });
        }
    }
    if let Some(mut e) = open {
        e.end = tags.len();
        out.push(e);
    }
    out
}

/// IOB2 tags with exactly these entities (which must not overlap) over `len` tokens.
pub fn tags_of(entities: &[Entity], len: usize) -> Vec<u32> {
    let mut t = vec![0; len];
    for e in entities {
        for (i, slot) in t.iter_mut().enumerate().take(e.end).skip(e.start) {
            *slot = if i == e.start {
                begin(e.kind)
            } else {
                inside(e.kind)
            };
        }
    }
    t
}

/// A problem in a tag sequence as read: the token and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagProblem {
    pub token: usize,
    pub message: String,
    /// An ill-formed sequence (repaired in the returned tags), not an unreadable tag.
    pub repairable: bool,
}

/// Reads one sentence's tag strings in `scheme` into IOB2 tag indices. Unknown types are
/// problems (with a did-you-mean from `suggest`); ill-formed sequences (an I- after O or after
/// another type, an E- with no B-, a B- with no end in BIOES) are problems too, and are repaired
/// in the returned tags (the entity starts or ends there) so the caller may keep them.
pub fn read_tags(
    raw: &[&str],
    scheme: Scheme,
    spec: &LabelSpec,
    suggest: &dyn Fn(&str) -> Option<String>,
) -> (Vec<u32>, Vec<TagProblem>) {
    let mut tags = Vec::with_capacity(raw.len());
    let mut problems = Vec::new();
    // (prefix, type) of the previous token, for the well-formedness checks.
    let mut prev: Option<(char, u32)> = None;
    for (i, s) in raw.iter().enumerate() {
        let s = s.trim();
        if s == "O" {
            if let (Scheme::Bioes, Some(('B' | 'I', k))) = (scheme, prev) {
                problems.push(TagProblem {
                    token: i,
                    message: format!(
                        "O after {}-{}: a BIOES entity ends with E- (or is S-)",
                        if prev.map(|p| p.0) == Some('B') {
                            'B'
                        } else {
                            'I'
                        },
                        spec.labels[k as usize].name
                    ),
                    repairable: true,
                });
            }
            tags.push(0);
            prev = None;
            continue;
        }
        let (prefix, name) = match s.split_once('-') {
            Some((p, n)) if p.len() == 1 && !n.is_empty() => (p.chars().next().unwrap_or('?'), n),
            _ => {
                problems.push(TagProblem {
                    token: i,
                    message: format!(
                        "tag \"{s}\" is not O or PREFIX-TYPE (prefixes of {}: {})",
                        scheme_name(scheme),
                        prefixes(scheme)
                    ),
                    repairable: false,
                });
                tags.push(0);
                prev = None;
                continue;
            }
        };
        if !prefixes(scheme).contains(prefix) {
            problems.push(TagProblem {
                token: i,
                message: format!(
                    "tag \"{s}\": prefix {prefix}- is not one of {} ({})",
                    prefixes(scheme),
                    scheme_name(scheme)
                ),
                repairable: false,
            });
        }
        let Some(k) = spec.index(name) else {
            let hint = suggest(name).map(|h| format!(" ({h})")).unwrap_or_default();
            problems.push(TagProblem {
                token: i,
                message: format!(
                    "unknown entity type \"{name}\" in tag \"{s}\"{hint}; the types are {}",
                    spec.names().join(", ")
                ),
                repairable: false,
            });
            tags.push(0);
            prev = None;
            continue;
        };
        let same = prev.is_some_and(|(_, pk)| pk == k);
        let open = matches!(prev, Some(('B' | 'I', pk)) if pk == k);
        let starts = match (scheme, prefix) {
            (_, 'B') | (Scheme::Bioes, 'S') => true,
            (Scheme::Iob1, 'I') => !same,
            (Scheme::Iob2, 'I') | (Scheme::Bioes, 'I' | 'E') => {
                let ok = if scheme == Scheme::Bioes { open } else { same };
                if !ok {
                    problems.push(TagProblem {
                        token: i,
                        message: format!(
                            "{s} after {}: an entity must begin with B-{name} (repaired: it begins here)",
                            match prev {
                                None => "O".to_string(),
                                Some((p, pk)) =>
                                    format!("{p}-{}", spec.labels[pk as usize].name),
                            }
                        ),
                        repairable: true,
                    });
                }
                !ok
            }
            _ => true,
        };
        if scheme == Scheme::Bioes {
            if let Some(('B' | 'I', pk)) = prev {
                if !(pk == k && matches!(prefix, 'I' | 'E')) {
                    problems.push(TagProblem {
                        token: i,
                        message: format!(
                            "{s} after an unfinished {}: a BIOES entity ends with E-",
                            spec.labels[pk as usize].name
                        ),
                        repairable: true,
                    });
                }
            }
        }
        tags.push(if starts { begin(k) } else { inside(k) });
        prev = match (scheme, prefix) {
            (Scheme::Bioes, 'E' | 'S') => Some(('E', k)),
            _ => Some((prefix, k)),
        };
    }
    if let (Scheme::Bioes, Some(('B' | 'I', k))) = (scheme, prev) {
        problems.push(TagProblem {
            token: raw.len().saturating_sub(1),
            message: format!(
                "the sentence ends inside a {} entity: a BIOES entity ends with E-",
                spec.labels[k as usize].name
            ),
            repairable: true,
        });
    }
    (tags, problems)
}

fn scheme_name(s: Scheme) -> &'static str {
    match s {
        Scheme::Iob2 => "IOB2",
        Scheme::Iob1 => "IOB1",
        Scheme::Bioes => "BIOES",
    }
}

fn prefixes(s: Scheme) -> &'static str {
    match s {
        Scheme::Iob2 | Scheme::Iob1 => "BI",
        Scheme::Bioes => "BIES",
    }
}

/// What kind of disagreement a dispute is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// The same span, another type.
    TypeSwap,
    /// Overlapping spans with other boundaries.
    Boundary,
    /// Annotated O, predicted an entity.
    Missing,
    /// Annotated an entity, predicted O.
    Spurious,
}

/// Where a tagging dispute is: tokens `start..end` and the IOB2 tags of its two readings there
/// (`readings[0]` is the current one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: SpanKind,
    pub readings: [Vec<u32>; 2],
}

/// How a span dispute is scored (higher: more suspicious).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpanScore {
    /// 1 - the lowest probability any token of the span gives its current tag.
    #[default]
    WorstToken,
    /// 1 - the softmin (temperature 0.05) of those probabilities, as cleanlab pools tokens.
    Softmin,
    /// (1 + the mean over the span's tokens of p(proposed tag) - p(current tag)) / 2.
    Margin,
}

/// The tagging task; `score` picks how disputes are ranked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tagging {
    pub score: SpanScore,
}

/// Per-token argmax of `p` (tokens x tags), repaired to IOB2: an I- that cannot continue
/// becomes B- (what the conlleval rules read it as).
pub fn predicted_tags(p: &[f32], tags: usize) -> Vec<u32> {
    let raw: Vec<u32> = p
        .chunks_exact(tags)
        .map(crate::classification::Classification::argmax)
        .collect();
    tags_of(&entities(&raw), raw.len())
}

/// Softmin pooling of token qualities (cleanlab's `softmin`, temperature 0.05).
pub fn softmin(q: &[f64]) -> f64 {
    if q.is_empty() {
        return 1.0;
    }
    let t = 0.05;
    let m = q.iter().cloned().fold(f64::INFINITY, f64::min);
    let w: Vec<f64> = q.iter().map(|x| (-(x - m) / t).exp()).collect();
    let z: f64 = w.iter().sum();
    q.iter().zip(&w).map(|(x, w)| x * w).sum::<f64>() / z
}

impl Tagging {
    /// The disputes between `given` tags and predicted tags `pred` (both IOB2), unscored.
    pub fn spans(given: &[u32], pred: &[u32]) -> Vec<Span> {
        let a = entities(given);
        let b = entities(pred);
        let mut out: Vec<Span> = Vec::new();
        let mut push = |s: Span| {
            if s.readings[0] != s.readings[1] && !out.contains(&s) {
                out.push(s);
            }
        };
        for e in b.iter().filter(|e| !a.contains(e)) {
            let over: Vec<&Entity> = a.iter().filter(|x| x.overlaps(e)).collect();
            if let [x] = over.as_slice() {
                if x.start == e.start && x.end == e.end {
                    let len = e.end - e.start;
                    push(Span {
                        start: e.start,
                        end: e.end,
                        kind: SpanKind::TypeSwap,
                        readings: [
                            given[e.start..e.end].to_vec(),
                            tags_of(
                                &[Entity {
                                    kind: e.kind,
                                    start: 0,
                                    end: len,
                                }],
                                len,
                            ),
                        ],
                    });
                    continue;
                }
            }
            let (start, end) = over
                .iter()
                .fold((e.start, e.end), |(s, t), x| (s.min(x.start), t.max(x.end)));
            let mut proposed = vec![0; end - start];
            for (i, slot) in proposed
                .iter_mut()
                .enumerate()
                .take(e.end - start)
                .skip(e.start - start)
            {
                *slot = if i == e.start - start {
                    begin(e.kind)
                } else {
                    inside(e.kind)
                };
            }
            push(Span {
                start,
                end,
                kind: if over.is_empty() {
                    SpanKind::Missing
                } else {
                    SpanKind::Boundary
                },
                readings: [given[start..end].to_vec(), proposed],
            });
        }
        for x in a.iter().filter(|x| !b.iter().any(|e| e.overlaps(x))) {
            push(Span {
                start: x.start,
                end: x.end,
                kind: SpanKind::Spurious,
                readings: [given[x.start..x.end].to_vec(), vec![0; x.end - x.start]],
            });
        }
        out
    }

    /// The suspicion score of a span under [`Tagging::score`].
    pub fn span_score(&self, s: &Span, p: &[f32], ntags: usize) -> f64 {
        let prob = |i: usize, t: u32| f64::from(p[(s.start + i) * ntags + t as usize]);
        let own: Vec<f64> = s.readings[0]
            .iter()
            .enumerate()
            .map(|(i, &t)| prob(i, t))
            .collect();
        match self.score {
            SpanScore::WorstToken => 1.0 - own.iter().cloned().fold(1.0, f64::min),
            SpanScore::Softmin => 1.0 - softmin(&own),
            SpanScore::Margin => {
                let n = s.readings[1].len().max(1) as f64;
                let m: f64 = s.readings[1]
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| prob(i, t) - own[i])
                    .sum::<f64>()
                    / n;
                (1.0 + m) / 2.0
            }
        }
    }
}

/// A reading's title: its entities in the span as "TYPE: words", or [`NOT_AN_ENTITY`].
pub fn title(tokens: &[String], start: usize, reading: &[u32], spec: &LabelSpec) -> String {
    let es = entities(reading);
    if es.is_empty() {
        return NOT_AN_ENTITY.to_string();
    }
    es.iter()
        .map(|e| {
            format!(
                "{}: {}",
                spec.labels[e.kind as usize].name,
                tokens[start + e.start..start + e.end].join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The sentence with tokens `start..end` marked as `[[ ... ]]`.
pub fn marked(tokens: &[String], start: usize, end: usize) -> String {
    let mut out = Vec::with_capacity(tokens.len() + 2);
    for (i, t) in tokens.iter().enumerate() {
        if i == start {
            out.push("[[".to_string());
        }
        out.push(t.clone());
        if i + 1 == end {
            out.push("]]".to_string());
        }
    }
    out.join(" ")
}

/// One span that differs between two taggings of a sentence, for `relabel diff` and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The readings' titles ("LOC: Acme", "not an entity").
    pub from: String,
    pub to: String,
    /// The entity types of each reading ("O" when none).
    pub from_type: String,
    pub to_type: String,
    /// The sentence with the span marked.
    pub sentence: String,
}

/// The span changes from tags `a` to tags `b` of one sentence.
pub fn changes(tokens: &[String], a: &[u32], b: &[u32], spec: &LabelSpec) -> Vec<Change> {
    let types = |r: &[u32]| {
        let mut t: Vec<&str> = entities(r)
            .iter()
            .map(|e| spec.labels[e.kind as usize].name.as_str())
            .collect();
        t.dedup();
        if t.is_empty() {
            "O".to_string()
        } else {
            t.join("+")
        }
    };
    if a == b {
        return Vec::new();
    }
    Tagging::spans(a, b)
        .into_iter()
        .map(|s| Change {
            from: title(tokens, s.start, &s.readings[0], spec),
            to: title(tokens, s.start, &s.readings[1], spec),
            from_type: types(&s.readings[0]),
            to_type: types(&s.readings[1]),
            sentence: marked(tokens, s.start, s.end),
        })
        .collect()
}

impl Task for Tagging {
    const KIND: &'static str = "tagging";
    type Input = [String];
    type Label = Vec<u32>;
    type Prediction = [f32];
    type Site = Span;
    type Scores = TagScores;

    fn disputes(
        &self,
        x: &[String],
        y: &Vec<u32>,
        p: &[f32],
        spec: &LabelSpec,
    ) -> Vec<Dispute<Span>> {
        let ntags = 1 + 2 * spec.len();
        if p.len() != y.len() * ntags {
            return Vec::new();
        }
        let pred = predicted_tags(p, ntags);
        Self::spans(y, &pred)
            .into_iter()
            .map(|s| Dispute {
                options: [
                    title(x, s.start, &s.readings[0], spec),
                    title(x, s.start, &s.readings[1], spec),
                ],
                score: self.span_score(&s, p, ntags),
                site: s,
            })
            .collect()
    }

    fn question(
        &self,
        x: &[String],
        d: &Dispute<Span>,
        spec: &LabelSpec,
        examples: usize,
    ) -> Question {
        let s = &d.site;
        let option = |k: usize| {
            let types: Vec<u32> = {
                let mut t: Vec<u32> = entities(&s.readings[k]).iter().map(|e| e.kind).collect();
                t.dedup();
                t
            };
            let (definition, ex) = if types.is_empty() {
                (
                    "The marked words are not a named entity of any type here (tag O).".to_string(),
                    Vec::new(),
                )
            } else {
                let defs: Vec<String> = types
                    .iter()
                    .map(|&t| {
                        let l = &spec.labels[t as usize];
                        format!("{}: {}", l.name, l.definition)
                    })
                    .collect();
                let ex: Vec<String> = types
                    .iter()
                    .flat_map(|&t| spec.labels[t as usize].examples.iter().cloned())
                    .take(examples.clamp(1, 5))
                    .collect();
                (defs.join(" "), ex)
            };
            QuestionOption {
                title: d.options[k].clone(),
                definition,
                examples: ex,
            }
        };
        Question {
            item: marked(x, s.start, s.end),
            options: [option(0), option(1)],
        }
    }

    fn apply(
        &self,
        y: &mut Vec<u32>,
        d: &Dispute<Span>,
        choice: Choice,
        spec: &LabelSpec,
    ) -> Result<(), Stale> {
        let s = &d.site;
        let names = tag_names(spec);
        let show = |t: &[u32]| {
            t.iter()
                .map(|&k| names.get(k as usize).map(String::as_str).unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if s.end > y.len() || s.start >= s.end || y[s.start..s.end] != s.readings[0][..] {
            return Err(Stale {
                expected: show(&s.readings[0]),
                found: y
                    .get(s.start..s.end.min(y.len()))
                    .map(show)
                    .unwrap_or_else(|| format!("a sentence of {} tokens", y.len())),
            });
        }
        if choice == Choice::Take {
            y[s.start..s.end].copy_from_slice(&s.readings[1]);
            // Keep the sequence IOB2: an entity continuing after the span now begins there.
            let fixed = tags_of(&entities(y), y.len());
            *y = fixed;
        }
        Ok(())
    }

    fn score(&self, ys: &[Vec<u32>], ps: &[&[f32]], spec: &LabelSpec) -> TagScores {
        let ntags = 1 + 2 * spec.len();
        let pred: Vec<Vec<u32>> = ps.iter().map(|p| predicted_tags(p, ntags)).collect();
        score(spec, ys, &pred)
    }
}

/// Entity-level scores of one split (seqeval's `classification_report`, default mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagScores {
    pub sentences: usize,
    pub tokens: usize,
    pub token_accuracy: f64,
    /// Micro-averaged over all entities.
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// type -> {precision, recall, f1, support (annotated entities)}
    pub per_type: BTreeMap<String, ClassScores>,
}

fn prf(tp: usize, predicted: usize, support: usize) -> (f64, f64, f64) {
    let p = if predicted == 0 {
        0.0
    } else {
        tp as f64 / predicted as f64
    };
    let r = if support == 0 {
        0.0
    } else {
        tp as f64 / support as f64
    };
    let f = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f)
}

/// Scores predicted tag sequences against the labels (both IOB2).
pub fn score(spec: &LabelSpec, ys: &[Vec<u32>], pred: &[Vec<u32>]) -> TagScores {
    let k = spec.len();
    let (mut tp, mut np, mut ns) = (vec![0usize; k], vec![0usize; k], vec![0usize; k]);
    let (mut tokens, mut correct) = (0usize, 0usize);
    for (y, p) in ys.iter().zip(pred) {
        tokens += y.len();
        correct += y.iter().zip(p).filter(|(a, b)| a == b).count();
        let a = entities(y);
        let b = entities(p);
        for e in &a {
            ns[e.kind as usize] += 1;
        }
        for e in &b {
            np[e.kind as usize] += 1;
            if a.contains(e) {
                tp[e.kind as usize] += 1;
            }
        }
    }
    let mut per_type = BTreeMap::new();
    for (i, name) in spec.names().iter().enumerate() {
        let (precision, recall, f1) = prf(tp[i], np[i], ns[i]);
        per_type.insert(
            name.to_string(),
            ClassScores {
                precision,
                recall,
                f1,
                support: ns[i] as u64,
            },
        );
    }
    let (precision, recall, f1) = prf(tp.iter().sum(), np.iter().sum(), ns.iter().sum());
    TagScores {
        sentences: ys.len(),
        tokens,
        token_accuracy: if tokens == 0 {
            0.0
        } else {
            correct as f64 / tokens as f64
        },
        precision,
        recall,
        f1,
        per_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LabelSpec {
        LabelSpec::from_names(["PER", "LOC", "ORG"].map(String::from))
    }

    fn read(raw: &str, scheme: Scheme) -> (Vec<u32>, Vec<TagProblem>) {
        let v: Vec<&str> = raw.split_whitespace().collect();
        read_tags(&v, scheme, &spec(), &|_| None)
    }

    fn show(tags: &[u32]) -> String {
        let n = tag_names(&spec());
        tags.iter()
            .map(|&t| n[t as usize].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn toks(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn entities_follow_the_conlleval_rules() {
        let (t, p) = read("B-PER I-PER O B-LOC B-LOC I-ORG", Scheme::Iob2);
        // I-ORG after B-LOC is ill-formed: reported, and repaired as an entity's start.
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].token, 5);
        assert!(
            p[0].message.contains("I-ORG after B-LOC"),
            "{}",
            p[0].message
        );
        let e = entities(&t);
        let spans: Vec<(u32, usize, usize)> = e.iter().map(|e| (e.kind, e.start, e.end)).collect();
        assert_eq!(spans, [(0, 0, 2), (1, 3, 4), (1, 4, 5), (2, 5, 6)]);
        // Raw argmax sequences (I- after O) read as seqeval reads them.
        let raw = [inside(1), inside(1), 0, inside(0), begin(0), inside(0)];
        let spans: Vec<(u32, usize, usize)> = entities(&raw)
            .iter()
            .map(|e| (e.kind, e.start, e.end))
            .collect();
        assert_eq!(spans, [(1, 0, 2), (0, 3, 4), (0, 4, 6)]);
    }

    #[test]
    fn bioes_and_iob1_read_into_iob2() {
        let (t, p) = read("S-PER B-LOC I-LOC E-LOC O B-ORG E-ORG", Scheme::Bioes);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(show(&t), "B-PER B-LOC I-LOC I-LOC O B-ORG I-ORG");
        let (_, p) = read("B-LOC O E-ORG", Scheme::Bioes);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].message.contains("O after B-LOC"), "{}", p[0].message);
        assert!(p[1].message.contains("E-ORG after O"), "{}", p[1].message);
        let (t, p) = read("I-PER I-PER B-PER O I-LOC", Scheme::Iob1);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(show(&t), "B-PER I-PER B-PER O B-LOC");
        let (_, p) = read("B-PER X-LOC I-FOO Q", Scheme::Iob2);
        let m: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(p.len(), 3, "{m:?}");
        assert!(m[0].contains("prefix X-"), "{m:?}");
        assert!(m[1].contains("unknown entity type \"FOO\""), "{m:?}");
        assert!(m[2].contains("not O or PREFIX-TYPE"), "{m:?}");
    }

    #[test]
    fn disputes_are_swaps_boundaries_missing_and_spurious_spans() {
        let x = toks("John lives in New York City and works at Acme");
        let (given, _) = read("B-PER O O B-LOC I-LOC O O O O B-LOC", Scheme::Iob2);
        let (pred, _) = read("O O O B-LOC I-LOC I-LOC O B-ORG O B-ORG", Scheme::Iob2);
        let spans = Tagging::spans(&given, &pred);
        let kinds: Vec<(SpanKind, usize, usize)> =
            spans.iter().map(|s| (s.kind, s.start, s.end)).collect();
        assert_eq!(
            kinds,
            [
                (SpanKind::Boundary, 3, 6),
                (SpanKind::Missing, 7, 8),
                (SpanKind::TypeSwap, 9, 10),
                (SpanKind::Spurious, 0, 1)
            ]
        );
        // Probabilities that put the predicted tags at 0.8 and the rest evenly.
        let nt = tag_names(&spec()).len();
        let mut p = vec![0.2 / (nt - 1) as f32; x.len() * nt];
        for (i, &t) in pred.iter().enumerate() {
            p[i * nt + t as usize] = 0.8;
        }
        let t = Tagging::default();
        let d = t.disputes(&x, &given, &p, &spec());
        assert_eq!(d.len(), 4);
        assert_eq!(
            d[0].options,
            ["LOC: New York".to_string(), "LOC: New York City".into()]
        );
        assert_eq!(
            d[1].options,
            [NOT_AN_ENTITY.to_string(), "ORG: works".into()]
        );
        assert_eq!(d[2].options, ["LOC: Acme".to_string(), "ORG: Acme".into()]);
        assert_eq!(
            d[3].options,
            ["PER: John".to_string(), NOT_AN_ENTITY.into()]
        );
        assert!(
            d.iter().all(|d| d.score > 0.9),
            "{:?}",
            d.iter().map(|d| d.score).collect::<Vec<_>>()
        );
        let q = t.question(&x, &d[2], &spec(), 3);
        assert_eq!(
            q.item,
            "John lives in New York City and works at [[ Acme ]]"
        );
        assert_eq!(q.options[1].title, "ORG: Acme");
        assert!(q.options[1].definition.starts_with("ORG:"));
        let q = t.question(&x, &d[3], &spec(), 3);
        assert!(q.options[1].definition.contains("not a named entity"));
        // Scores rank a confident model's disputes above an unsure one's.
        let flat = vec![1.0 / nt as f32; x.len() * nt];
        let unsure = t.disputes(&x, &given, &flat, &spec());
        assert!(unsure.iter().all(|u| u.score < 0.9));
        for s in [SpanScore::Softmin, SpanScore::Margin] {
            let d = Tagging { score: s }.disputes(&x, &given, &p, &spec());
            assert!(d[2].score > 0.5, "{s:?}: {}", d[2].score);
        }
    }

    #[test]
    fn applying_rewrites_the_span_and_refuses_a_stale_one() {
        let x = toks("New York City Hall opened");
        let (mut y, _) = read("B-LOC I-LOC I-ORG I-ORG O", Scheme::Iob2);
        // Repaired on read: B-LOC I-LOC B-ORG I-ORG O.
        let (pred, _) = read("B-ORG I-ORG I-ORG I-ORG O", Scheme::Iob2);
        let t = Tagging::default();
        let d = t.disputes(&x, &y, &one_hot(&pred), &spec());
        let first = d.iter().find(|d| d.site.start == 0).unwrap().clone();
        assert_eq!(first.site.kind, SpanKind::Boundary);
        t.apply(&mut y, &first, Choice::Take, &spec()).unwrap();
        assert_eq!(show(&y), "B-ORG I-ORG I-ORG I-ORG O");
        let e = t.apply(&mut y, &first, Choice::Take, &spec()).unwrap_err();
        assert_eq!(e.found, "B-ORG I-ORG I-ORG I-ORG");
        // A span rewritten to O ahead of a continuing entity leaves it well-formed.
        let (mut y, _) = read("B-LOC I-LOC I-LOC", Scheme::Iob2);
        let d = Dispute {
            site: Span {
                start: 0,
                end: 1,
                kind: SpanKind::Boundary,
                readings: [vec![begin(1)], vec![0]],
            },
            options: ["a".into(), "b".into()],
            score: 1.0,
        };
        t.apply(&mut y, &d, Choice::Take, &spec()).unwrap();
        assert_eq!(show(&y), "O B-LOC I-LOC");
    }

    fn one_hot(tags: &[u32]) -> Vec<f32> {
        let nt = tag_names(&spec()).len();
        let mut p = vec![0.0; tags.len() * nt];
        for (i, &t) in tags.iter().enumerate() {
            p[i * nt + t as usize] = 1.0;
        }
        p
    }

    #[test]
    fn scores_count_exact_entities() {
        let (a, _) = read("B-PER I-PER O B-LOC O B-ORG", Scheme::Iob2);
        let (b, _) = read("B-PER I-PER O B-ORG O B-ORG", Scheme::Iob2);
        let s = score(&spec(), std::slice::from_ref(&a), std::slice::from_ref(&b));
        assert!((s.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.per_type["LOC"].support, 1);
        assert_eq!(s.per_type["LOC"].f1, 0.0);
        assert!((s.per_type["ORG"].precision - 0.5).abs() < 1e-12);
        let p = one_hot(&b);
        let t = Tagging::default().score(&[a], &[p.as_slice()], &spec());
        assert_eq!(t, s);
    }
}
