//! Sequence generation, a [`Task`]: the input is a source text (a sentence, a word, or a record
//! such as E2E's `name[Aromi], eatType[pub]`), the label is the target text, the prediction the
//! model's output and the target's length-normalised log-probability. A dispute is a row whose
//! output and target differ, judged between the two texts; scores are corpus BLEU and chrF with
//! every target of the same source as a reference (as sacreBLEU computes them), exact match,
//! token error rate, and for records the slot error rate of a deterministic coverage check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::LabelSpec;
use crate::task::{Choice, Dispute, Question, QuestionOption, Stale, Task};
use crate::textmetrics;

/// What the model says about one row.
#[derive(Debug, Clone, PartialEq)]
pub struct GenPrediction {
    /// The decoded output text.
    pub output: String,
    /// The target's mean log-probability per token (nats) under the model.
    pub target_logprob: f32,
}

/// The generation task; `description` is the short task text a judge is shown.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub description: String,
    /// Examples of source -> target pairs shown with the question (1-5).
    pub examples: Vec<(String, String)>,
}

/// The short task text used when the dataset gives none.
pub const DEFAULT_DESCRIPTION: &str =
    "Choose the text that says exactly what the input says: nothing missing, nothing added, nothing wrong.";

/// One attribute of a record source: `slot[value]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub slot: String,
    pub value: String,
}

/// Parses a record source written as `slot[value], slot[value], ...` (E2E's meaning
/// representations); `None` when the text is not of that form.
pub fn parse_record(text: &str) -> Option<Vec<Slot>> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let open = rest.find('[')?;
        let close = open + rest[open..].find(']')?;
        let slot = rest[..open].trim().trim_start_matches(',').trim();
        if slot.is_empty() || slot.contains(']') {
            return None;
        }
        out.push(Slot {
            slot: slot.to_string(),
            value: rest[open + 1..close].trim().to_string(),
        });
        rest = rest[close + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    (!out.is_empty()).then_some(out)
}

fn lower_words(text: &str) -> String {
    let t: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    format!(" {} ", t.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The phrases that realise a slot's value in text. Our own lexicon for E2E's closed-valued
/// slots (family-friendliness, price range, rating, area, eat type); open values (names,
/// foods) are realised by the value itself.
fn realisations(slot: &Slot) -> Vec<String> {
    let s = slot.slot.to_lowercase().replace(' ', "");
    let v = slot.value.to_lowercase();
    let words = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match (s.as_str(), v.as_str()) {
        ("familyfriendly", "yes") => words(&[
            "family friendly",
            "kid friendly",
            "child friendly",
            "children friendly",
            "families",
            "children",
            "kids",
            "family",
        ]),
        ("familyfriendly", "no") => words(&[
            "not family friendly",
            "not kid friendly",
            "not child friendly",
            "non family friendly",
            "not children friendly",
            "no children",
            "no kids",
            "not family",
            "adult",
            "adults",
            "not a family",
            "isn t family",
            "isn t kid",
            "not for families",
            "not for children",
            "not for kids",
            "non family",
        ]),
        ("pricerange", "cheap") => words(&[
            "cheap",
            "low price",
            "inexpensive",
            "low cost",
            "affordable",
            "budget",
        ]),
        ("pricerange", "moderate") => words(&[
            "moderate",
            "moderately",
            "mid price",
            "average price",
            "reasonabl",
            "mid range",
            "medium price",
        ]),
        ("pricerange", "high") => words(&[
            "high price",
            "expensive",
            "high cost",
            "pricey",
            "costly",
            "upscale",
            "high end",
        ]),
        ("pricerange", "less than £20") => words(&[
            "less than 20",
            "under 20",
            "below 20",
            "20 or less",
            "cheap",
        ]),
        ("pricerange", "£20-25") => words(&["20 25", "20 to 25", "20 and 25"]),
        ("pricerange", "more than £30") => words(&[
            "more than 30",
            "over 30",
            "above 30",
            "30 or more",
            "expensive",
        ]),
        ("customerrating", "low") => words(&["low", "poor", "bad", "1 star", "one star"]),
        ("customerrating", "average") => {
            words(&["average", "3 star", "three star", "mediocre", "okay"])
        }
        ("customerrating", "high") => {
            words(&["high", "excellent", "great", "5 star", "five star", "good"])
        }
        ("customerrating", "1 out of 5") => {
            words(&["1 out of 5", "1 star", "one star", "1 5", "low"])
        }
        ("customerrating", "3 out of 5") => {
            words(&["3 out of 5", "3 star", "three star", "3 5", "average"])
        }
        ("customerrating", "5 out of 5") => {
            words(&["5 out of 5", "5 star", "five star", "5 5", "high"])
        }
        ("area", "city centre") => words(&[
            "city centre",
            "city center",
            "centre",
            "center",
            "downtown",
            "centre of the city",
            "center of the city",
        ]),
        ("area", "riverside") => words(&["riverside", "river"]),
        ("eattype", "pub") => words(&["pub"]),
        ("eattype", "coffee shop") => words(&["coffee shop", "coffee house", "cafe", "coffee"]),
        ("eattype", "restaurant") => words(&["restaurant", "eatery", "diner", "dining"]),
        _ => vec![v],
    }
}

/// Whether `text` realises `slot` (case- and punctuation-insensitive phrase match).
pub fn realises(text: &str, slot: &Slot) -> bool {
    let t = lower_words(text);
    let negated = |p: &str| {
        ["not ", "non ", "isn t ", "no "]
            .iter()
            .any(|n| p.starts_with(n))
    };
    let yes_no = slot.slot.to_lowercase().replace(' ', "") == "familyfriendly";
    realisations(slot).iter().any(|p| {
        let p = lower_words(p);
        if !t.contains(&p) {
            return false;
        }
        // "family friendly" inside "not family friendly" does not realise `yes`.
        if yes_no && slot.value.eq_ignore_ascii_case("yes") && !negated(p.trim()) {
            let negs = ["not", "non", "isn t", "no", "n t"];
            return t.match_indices(&p).any(|(i, _)| {
                let before = t[..i].trim_end();
                !negs.iter().any(|n| before.ends_with(n))
            });
        }
        true
    })
}

/// The slots of `record` that `text` does not realise.
pub fn missing_slots<'a>(record: &'a [Slot], text: &str) -> Vec<&'a Slot> {
    record.iter().filter(|s| !realises(text, s)).collect()
}

/// The share of a record's slots that `text` realises (1 when the source is not a record).
pub fn coverage(source: &str, text: &str) -> f64 {
    match parse_record(source) {
        Some(r) if !r.is_empty() => 1.0 - missing_slots(&r, text).len() as f64 / r.len() as f64,
        _ => 1.0,
    }
}

/// Scores of generated outputs against their references.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenScores {
    /// Distinct sources scored (each once, against all its references).
    pub sources: usize,
    pub bleu: f64,
    pub chrf: f64,
    /// Share of outputs equal to one of their references (after whitespace normalisation).
    pub exact_match: f64,
    /// Token (phoneme, for G2P) error rate against the closest reference.
    pub token_error_rate: f64,
    /// Records only: missing slots / slots, by the coverage check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_error_rate: Option<f64>,
}

fn normalised(t: &str) -> String {
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Scores `outputs` (one per distinct source) against `refs` (that source's references).
pub fn score_outputs(sources: &[String], outputs: &[String], refs: &[Vec<String>]) -> GenScores {
    let exact = outputs
        .iter()
        .zip(refs)
        .filter(|(o, rs)| rs.iter().any(|r| normalised(r) == normalised(o)))
        .count();
    let (mut missing, mut slots, mut records) = (0usize, 0usize, 0usize);
    for (s, o) in sources.iter().zip(outputs) {
        if let Some(r) = parse_record(s) {
            records += 1;
            slots += r.len();
            missing += missing_slots(&r, o).len();
        }
    }
    GenScores {
        sources: outputs.len(),
        bleu: textmetrics::corpus_bleu(outputs, refs),
        chrf: textmetrics::corpus_chrf(outputs, refs),
        exact_match: exact as f64 / outputs.len().max(1) as f64,
        token_error_rate: textmetrics::token_error_rate(outputs, refs),
        slot_error_rate: (records == sources.len() && slots > 0)
            .then(|| missing as f64 / slots as f64),
    }
}

/// Groups a split's rows by source: each distinct source (first-seen order), the first row
/// holding it, and all its targets (the references).
pub fn group_by_source(sources: &[String], targets: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut at: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, (s, t)) in sources.iter().zip(targets).enumerate() {
        let k = *at.entry(s.as_str()).or_insert_with(|| {
            out.push((i, Vec::new()));
            out.len() - 1
        });
        out[k].1.push(t.clone());
    }
    out
}

/// A dispute's suspicion: how far the output is from the target (1 - sentence chrF / 100),
/// plus, for a record source, how much more of the record the output covers than the target.
pub fn dispute_score(source: &str, target: &str, output: &str) -> f64 {
    let distance = 1.0 - textmetrics::sentence_chrf(output, target) / 100.0;
    let gain = (coverage(source, output) - coverage(source, target)).max(0.0);
    distance + gain
}

impl Task for Generation {
    const KIND: &'static str = "generation";
    type Input = str;
    type Label = String;
    type Prediction = GenPrediction;
    type Site = ();
    type Scores = GenScores;

    fn disputes(
        &self,
        x: &str,
        y: &String,
        p: &GenPrediction,
        _spec: &LabelSpec,
    ) -> Vec<Dispute<()>> {
        if p.output.trim().is_empty() || normalised(&p.output) == normalised(y) {
            return Vec::new();
        }
        vec![Dispute {
            site: (),
            options: [y.clone(), p.output.clone()],
            score: dispute_score(x, y, &p.output),
        }]
    }

    fn question(&self, x: &str, d: &Dispute<()>, _spec: &LabelSpec, examples: usize) -> Question {
        let shown: Vec<String> = self
            .examples
            .iter()
            .take(examples.clamp(1, 5))
            .map(|(s, t)| format!("{s} => {t}"))
            .collect();
        let description = if self.description.trim().is_empty() {
            DEFAULT_DESCRIPTION.to_string()
        } else {
            self.description.trim().to_string()
        };
        // Both options carry the same task text and examples: nothing tells the judge which
        // text is the current one.
        let option = |title: &String| QuestionOption {
            title: title.clone(),
            definition: description.clone(),
            examples: shown.clone(),
        };
        Question {
            item: x.to_string(),
            options: [option(&d.options[0]), option(&d.options[1])],
        }
    }

    fn apply(
        &self,
        y: &mut String,
        d: &Dispute<()>,
        choice: Choice,
        _spec: &LabelSpec,
    ) -> Result<(), Stale> {
        if *y != d.options[0] {
            return Err(Stale {
                expected: d.options[0].clone(),
                found: y.clone(),
            });
        }
        if choice == Choice::Take {
            *y = d.options[1].clone();
        }
        Ok(())
    }

    /// Single-reference scores (each target its own reference); the evaluator groups a split
    /// by source for multi-reference scores ([`score_outputs`]).
    fn score(&self, ys: &[String], ps: &[&GenPrediction], _spec: &LabelSpec) -> GenScores {
        let outputs: Vec<String> = ps.iter().map(|p| p.output.clone()).collect();
        let refs: Vec<Vec<String>> = ys.iter().map(|y| vec![y.clone()]).collect();
        let sources = vec![String::new(); outputs.len()];
        let mut s = score_outputs(&sources, &outputs, &refs);
        s.slot_error_rate = None;
        s
    }
}

/// Delexicalisation of record sources: the values of `slots` (e.g. E2E's `name`, `near`)
/// become placeholders `__slot__` in the source and wherever they occur in the target, so a
/// model learns the sentence around a name rather than the name; outputs are lexicalised back.
pub fn delexicalise(
    source: &str,
    target: &str,
    slots: &[String],
) -> (String, String, Vec<(String, String)>) {
    let Some(record) = parse_record(source) else {
        return (source.to_string(), target.to_string(), Vec::new());
    };
    let mut src = String::new();
    let mut tgt = target.to_string();
    let mut subs = Vec::new();
    for (i, s) in record.iter().enumerate() {
        if i > 0 {
            src.push_str(", ");
        }
        if slots.iter().any(|d| d.eq_ignore_ascii_case(&s.slot)) && !s.value.is_empty() {
            let ph = format!("__{}__", s.slot.to_lowercase().replace(' ', "_"));
            src.push_str(&format!("{}[{ph}]", s.slot));
            tgt = tgt.replace(&s.value, &ph);
            subs.push((ph, s.value.clone()));
        } else {
            src.push_str(&format!("{}[{}]", s.slot, s.value));
        }
    }
    (src, tgt, subs)
}

/// Puts delexicalised values back into an output.
pub fn relexicalise(output: &str, subs: &[(String, String)]) -> String {
    let mut o = output.to_string();
    for (ph, v) in subs {
        o = o.replace(ph, v);
    }
    o
}

/// Words and punctuation marks of a text (the models' tokens); `chars` splits into characters
/// instead (G2P sources), whitespace dropped.
pub fn tokens(text: &str, chars: bool) -> Vec<String> {
    if chars {
        return text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(String::from)
            .collect();
    }
    let mut out = Vec::new();
    for w in text.split_whitespace() {
        let mut cur = String::new();
        for c in w.chars() {
            if c.is_alphanumeric() || c == '_' || c == '\'' || c == '£' {
                cur.push(c);
            } else {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// Joins tokens back into text: no space before closing punctuation or after an opening one.
pub fn detokenize(tokens: &[String]) -> String {
    let mut s = String::new();
    for (i, t) in tokens.iter().enumerate() {
        let closing = matches!(
            t.as_str(),
            "." | "," | "!" | "?" | ";" | ":" | ")" | "]" | "%"
        );
        let after_open = i > 0 && matches!(tokens[i - 1].as_str(), "(" | "[" | "-" | "£");
        let dash = t == "-";
        if i > 0 && !closing && !after_open && !dash {
            s.push(' ');
        }
        s.push_str(t);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MR: &str = "name[The Eagle], eatType[coffee shop], priceRange[cheap], customer rating[5 out of 5], area[riverside], familyFriendly[no], near[Burger King]";

    #[test]
    fn records_parse_and_coverage_counts_missing_slots() {
        let r = parse_record(MR).unwrap();
        assert_eq!(r.len(), 7);
        assert_eq!(r[3].slot, "customer rating");
        assert_eq!(r[6].value, "Burger King");
        assert!(parse_record("just a sentence").is_none());
        let full = "The Eagle is a cheap coffee shop by the riverside near Burger King, rated 5 out of 5 and not family-friendly.";
        assert!(
            missing_slots(&r, full).is_empty(),
            "{:?}",
            missing_slots(&r, full)
        );
        let short = "The Eagle is a coffee shop near Burger King.";
        let miss: Vec<&str> = missing_slots(&r, short)
            .iter()
            .map(|s| s.slot.as_str())
            .collect();
        assert_eq!(
            miss,
            ["priceRange", "customer rating", "area", "familyFriendly"]
        );
        assert!((coverage(MR, short) - 3.0 / 7.0).abs() < 1e-12);
        // "not family-friendly" does not realise familyFriendly[yes].
        let yes = Slot {
            slot: "familyFriendly".into(),
            value: "yes".into(),
        };
        assert!(!realises("It is not family-friendly.", &yes));
        assert!(realises("A family-friendly pub.", &yes));
    }

    #[test]
    fn a_dispute_offers_the_target_and_the_output_and_applies_once() {
        let g = Generation::default();
        let spec = LabelSpec::new(Vec::new());
        let y = "The Eagle is a coffee shop.".to_string();
        let p = GenPrediction {
            output: "The Eagle is a cheap coffee shop by the river.".into(),
            target_logprob: -2.0,
        };
        let d = g.disputes(MR, &y, &p, &spec);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].options, [y.clone(), p.output.clone()]);
        assert!(d[0].score > 0.0);
        let same = GenPrediction {
            output: " The Eagle is a  coffee shop.".into(),
            target_logprob: -0.1,
        };
        assert!(g.disputes(MR, &y, &same, &spec).is_empty());
        let q = g.question(MR, &d[0], &spec, 3);
        assert_eq!(q.item, MR);
        assert_eq!(q.options[1].title, p.output);
        assert_eq!(q.options[0].definition, q.options[1].definition);
        let mut label = y.clone();
        g.apply(&mut label, &d[0], Choice::Take, &spec).unwrap();
        assert_eq!(label, p.output);
        // Applied again, the row no longer holds the disputed target.
        assert!(g.apply(&mut label, &d[0], Choice::Take, &spec).is_err());
    }

    #[test]
    fn delexicalisation_round_trips() {
        let (s, t, subs) = delexicalise(
            MR,
            "The Eagle is near Burger King.",
            &["name".into(), "near".into()],
        );
        assert!(s.starts_with("name[__name__], eatType[coffee shop]"), "{s}");
        assert!(s.ends_with("near[__near__]"), "{s}");
        assert_eq!(t, "__name__ is near __near__.");
        assert_eq!(relexicalise(&t, &subs), "The Eagle is near Burger King.");
    }

    #[test]
    fn tokens_and_back() {
        let t = tokens("The Eagle's price is £20-25, isn't it?", false);
        assert_eq!(
            t,
            ["The", "Eagle's", "price", "is", "£20", "-", "25", ",", "isn't", "it", "?"]
        );
        assert_eq!(detokenize(&t), "The Eagle's price is £20-25, isn't it?");
        assert_eq!(tokens("a b", true), ["a", "b"]);
    }

    #[test]
    fn grouping_by_source_gathers_references() {
        let s: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        let t: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        let g = group_by_source(&s, &t);
        assert_eq!(
            g,
            vec![
                (0, vec!["x".to_string(), "z".to_string()]),
                (1, vec!["y".to_string()])
            ]
        );
    }
}
