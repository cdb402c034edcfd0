//! relabel-plugins: the built-in node kinds, listed in one place by [`registry`].

pub mod apply;
pub mod clip;
pub mod command;
pub mod find;
pub mod inputs;
pub mod judge;
pub mod model;
pub mod outputs;
pub mod score;
pub mod sources;
pub mod template;

pub use relabel_tasks::{data, detection, flags, home, predictions};

use relabel_engine::plugin::{typed, Registry};

/// Every built-in node kind. This one list drives lookup, validation, the schema and `--help`.
pub fn registry() -> Registry {
    Registry::new(vec![
        typed(command::Command),
        typed(sources::dataset::DatasetNode),
        typed(sources::votes::Votes),
        typed(sources::llm_annotator::LlmAnnotator),
        typed(sources::behavior_log::BehaviorLog),
        typed(model::trainer::Trainer),
        typed(model::self_predictor::SelfPredictor),
        typed(find::disagreement_filter::DisagreementFilter),
        typed(judge::binary_relabeler::BinaryRelabeler),
        typed(apply::apply_labels::ApplyLabels),
        typed(score::evaluator::Evaluator),
        typed(find::similarity_miner::Embedder),
        typed(find::similarity_miner::SimilarityMiner),
    ])
    .with_resource(relabel_llm::endpoint::RESOURCE)
}
