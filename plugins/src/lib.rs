//! relabel-plugins: the built-in node kinds, listed in one place by [`registry`].

pub mod command;
pub mod data;
pub mod dataset;
pub mod disagreement_filter;
pub mod endpoint;
pub mod flags;
pub mod predictions;
pub mod self_predictor;
pub mod trainer;
pub mod worker;

use relabel_engine::plugin::{typed, Registry};

/// Every built-in node kind. This one list drives lookup, validation, the schema and `--help`.
pub fn registry() -> Registry {
    Registry::new(vec![
        typed(command::Command),
        typed(dataset::DatasetNode),
        typed(trainer::Trainer),
        typed(self_predictor::SelfPredictor),
        typed(disagreement_filter::DisagreementFilter),
    ])
    .with_endpoints(endpoint::check, endpoint::schema)
}
