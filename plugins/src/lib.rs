//! relabel-plugins: the built-in node kinds, listed in one place by [`registry`].

pub mod apply_labels;
pub mod behavior_log;
pub mod binary_relabeler;
pub mod child;
pub mod clip;
pub mod command;
pub mod dataset;
pub mod disagreement_filter;
pub mod endpoint;
pub mod evaluator;
pub mod human;
pub mod llm;
pub mod llm_annotator;
pub mod local_llm;
pub mod self_predictor;
pub mod similarity_miner;
pub mod trainer;
pub mod votes;
pub mod worker;

pub use relabel_tasks::{data, flags, predictions};

use relabel_engine::plugin::{typed, Registry};

/// Every built-in node kind. This one list drives lookup, validation, the schema and `--help`.
pub fn registry() -> Registry {
    Registry::new(vec![
        typed(command::Command),
        typed(dataset::DatasetNode),
        typed(votes::Votes),
        typed(llm_annotator::LlmAnnotator),
        typed(behavior_log::BehaviorLog),
        typed(trainer::Trainer),
        typed(self_predictor::SelfPredictor),
        typed(disagreement_filter::DisagreementFilter),
        typed(binary_relabeler::BinaryRelabeler),
        typed(apply_labels::ApplyLabels),
        typed(evaluator::Evaluator),
        typed(similarity_miner::Embedder),
        typed(similarity_miner::SimilarityMiner),
    ])
    .with_endpoints(endpoint::check, endpoint::schema)
    .with_endpoint_key(endpoint::cache_key)
}

/// Problems for each input in `needed` that a node does not have; `example` shows the form.
pub(crate) fn require_inputs(
    inputs: &[String],
    needed: &[&str],
    example: &str,
) -> Vec<relabel_engine::plugin::ConfigProblem> {
    needed
        .iter()
        .filter(|need| !inputs.iter().any(|i| i == *need))
        .map(|need| {
            relabel_engine::plugin::ConfigProblem::new(
                relabel_engine::span::Path::root(),
                format!("needs an input named \"{need}\" (inputs: {example})"),
            )
        })
        .collect()
}

/// A path from a config: inside the input folder `data` when `in_input` is set (files a
/// command node produced), else relative to the manifest's folder.
pub(crate) fn config_path(
    ctx: &relabel_engine::plugin::NodeContext,
    inputs: &relabel_engine::plugin::Inputs,
    in_input: bool,
    p: &std::path::Path,
) -> std::path::PathBuf {
    match inputs.get("data").filter(|_| in_input) {
        Some(a) => a.path.join(p),
        None => ctx.resolve(p),
    }
}

/// The problem (if any) of a node reading its files from the input folder `data`.
pub(crate) fn require_data_input(
    in_input: bool,
    inputs: &[String],
) -> Vec<relabel_engine::plugin::ConfigProblem> {
    if in_input {
        require_inputs(inputs, &["data"], "{data: MAKE.data}")
    } else {
        Vec::new()
    }
}

/// A prompt template: the file a config names (relative to the manifest), else `default`.
pub(crate) fn template_text(
    ctx: &relabel_engine::plugin::NodeContext,
    path: Option<&std::path::Path>,
    default: &str,
) -> Result<String, String> {
    match path {
        Some(p) => std::fs::read_to_string(ctx.resolve(p))
            .map_err(|e| format!("template {}: {e}", p.display())),
        None => Ok(default.to_string()),
    }
}

/// A minijinja environment holding `template` as "prompt" (undefined variables are errors),
/// and the template's digest (reports and audits name the prompt version by it).
pub(crate) fn strict_template(
    template: &str,
) -> Result<(minijinja::Environment<'static>, String), String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template_owned("prompt", template.to_string())
        .map_err(|e| format!("template: {e:#}"))?;
    Ok((env, blake3::hash(template.as_bytes()).to_hex().to_string()))
}

/// Writes a train-only dataset and its flags as the outputs `dataset` and `flags`.
pub(crate) fn write_train_and_flags(
    ctx: &relabel_engine::plugin::NodeContext,
    labels: data::LabelSpec,
    train: data::Split,
    flags: &[flags::Flag],
) -> Result<(std::path::PathBuf, std::path::PathBuf), relabel_engine::plugin::NodeError> {
    use relabel_engine::plugin::NodeError;
    let ds = data::Dataset {
        task: Default::default(),
        labels,
        splits: [("train".to_string(), train)].into(),
    };
    let out = ctx.output_path("dataset");
    ds.write(&out)
        .map_err(|e| NodeError::io("writing the dataset", e))?;
    let fl = ctx.output_path("flags");
    flags::write(&fl, flags).map_err(|e| NodeError::io("writing flags", e))?;
    Ok((out, fl))
}
