//! Stage 4, judging: `binary_relabeler` asks an LLM (or people, via [`human`] export and
//! import) to choose between a row's label and one candidate.

pub mod binary_relabeler;
pub mod crops;
pub mod human;
