//! The seam every stage downstream of the model is written against: a task says what a label
//! is, where it can be wrong (a dispute: a site and two readings), how the question is shown to
//! a judge, how an answer is applied, and how a split is scored. Classification is the first
//! task; tagging, detection, generation and CTR implement the same trait.

use serde::{Deserialize, Serialize};

use crate::data::LabelSpec;

/// The task kinds a dataset can declare (`dataset` node `task:`). Only the built ones are here.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A text and one class.
    #[default]
    Classification,
    /// A sentence's tokens and one tag per token (NER): entities of the spec's types, IOB2.
    Tagging,
    /// A feature row (user, item, context) and a click (1) or no click (0).
    Ctr,
    /// A source text (a sentence, a word, a record) and a target text.
    Generation,
    /// An image and its boxes, each a class and a rectangle.
    Detection,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Classification => crate::classification::Classification::KIND,
            TaskKind::Tagging => crate::tagging::Tagging::KIND,
            TaskKind::Ctr => crate::ctr::Ctr::KIND,
            TaskKind::Generation => crate::generation::Generation::KIND,
            TaskKind::Detection => crate::detection::Detection::KIND,
        }
    }
}

/// A place where a label may be wrong, and the two readings a judge chooses between.
/// `options[0]` is the current reading, `options[1]` the proposed one; their titles are the
/// strings an LLM is constrained to.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispute<S> {
    pub site: S,
    pub options: [String; 2],
    /// How suspicious the site is (higher: more).
    pub score: f64,
}

/// One option of a question: its title, what it means, and up to five examples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionOption {
    pub title: String,
    pub definition: String,
    pub examples: Vec<String>,
}

/// What a judge sees: the item and exactly two options (never the rest of the label set).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Question {
    pub item: String,
    pub options: [QuestionOption; 2],
}

/// A judge's answer: which option, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Option 0: the current reading stays.
    Keep,
    /// Option 1: the proposed reading replaces it.
    Take,
}

/// Why an answer cannot be applied: the label is no longer what was disputed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the label is \"{found}\", but the dispute was about \"{expected}\" (from another dataset version?)")]
pub struct Stale {
    pub expected: String,
    pub found: String,
}

/// A task: see the module's text.
pub trait Task: Send + Sync + 'static {
    /// The `task:` name.
    const KIND: &'static str;
    type Input: ?Sized;
    type Label;
    type Prediction: ?Sized;
    type Site;
    type Scores;

    /// Where prediction and label disagree, each with its two readings.
    fn disputes(
        &self,
        x: &Self::Input,
        y: &Self::Label,
        p: &Self::Prediction,
        spec: &LabelSpec,
    ) -> Vec<Dispute<Self::Site>>;

    /// The binary question for one dispute; `examples` gives each option's examples (1-5).
    fn question(
        &self,
        x: &Self::Input,
        d: &Dispute<Self::Site>,
        spec: &LabelSpec,
        examples: usize,
    ) -> Question;

    /// Applies a judge's choice; refuses when the label changed since the dispute was raised.
    fn apply(
        &self,
        y: &mut Self::Label,
        d: &Dispute<Self::Site>,
        choice: Choice,
        spec: &LabelSpec,
    ) -> Result<(), Stale>;

    /// Scores predictions against labels over one split.
    fn score(&self, ys: &[Self::Label], ps: &[&Self::Prediction], spec: &LabelSpec)
        -> Self::Scores;
}
