//! Checks and paths for a node's inputs: required input names, and config paths that point
//! inside the `data` input folder.

/// Problems for each input in `needed` that a node does not have; `example` shows the form.
pub fn require_inputs(
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
pub fn config_path(
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
pub fn require_data_input(
    in_input: bool,
    inputs: &[String],
) -> Vec<relabel_engine::plugin::ConfigProblem> {
    if in_input {
        require_inputs(inputs, &["data"], "{data: MAKE.data}")
    } else {
        Vec::new()
    }
}
